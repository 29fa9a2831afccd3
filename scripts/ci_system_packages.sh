#!/usr/bin/env bash
# System (Debian) packages the tests need; run by .ci/run on a fresh machine (as root). Users do not need it:
# the tool itself runs without them.
set -euo pipefail
PACKAGES=(
  chromium  # headless browser: tests/test_report.py opens report.html offline and checks the rendered plots
  postgresql  # tests/test_workers.py starts a private PostgreSQL server for the distributed-worker tests
  # add further Debian packages here, one per line with the reason
)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "system packages ready: ${PACKAGES[*]}"
