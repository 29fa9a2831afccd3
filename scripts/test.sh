#!/usr/bin/env bash
# Quick start 2: install everything the tests need (Debian packages through apt-get, then .venv with the
# test extra), then run the tests. Arguments go to pytest instead of the default "-q tests".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_packages.sh
bash scripts/setup.sh test
if [ $# -eq 0 ]; then  # the whole suite: first, every extra resolves against the registry (seconds, no wheel fetched)
  .venv/bin/python scripts/check_extras.py
  set -- -q tests
fi
exec .venv/bin/python -m pytest "$@"
