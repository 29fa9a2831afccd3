#!/usr/bin/env bash
# Quick start 2: install everything the tests need (Debian packages through apt-get, .venv with the test extra,
# and .venv-vision for the tests marked vision), then run the tests: those marked vision in .venv-vision (they
# need torchvision, which .venv's CPU torch has no match for), all the others in .venv.
# Arguments go to pytest in .venv instead, the tests marked vision left out (a -m of your own replaces that);
# those run by hand with .venv-vision/bin/python and "-m vision" (docs/en/development.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_packages.sh
bash scripts/setup.sh test
if [ $# -eq 0 ]; then  # the whole suite: first, every extra resolves against the registry (seconds, no wheel fetched)
  .venv/bin/python scripts/check_extras.py
  start=$SECONDS
  bash scripts/setup.sh vision
  echo "vision environment (.venv-vision) ready in $((SECONDS - start)) s"
  start=$SECONDS
  status=0
  .venv-vision/bin/python -m pytest -q -m vision tests || status=$?
  echo "tests marked vision ran in .venv-vision in $((SECONDS - start)) s (exit status $status)"
  .venv/bin/python -m pytest -q -m "not vision" tests || status=$?
  exit "$status"
fi
exec .venv/bin/python -m pytest -m "not vision" "$@"
