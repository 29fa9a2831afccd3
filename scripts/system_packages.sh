#!/usr/bin/env bash
# System packages the tests need (the tool itself runs without them). Run by scripts/test.sh.
# Installs what is missing with apt-get, as root or through sudo; where that cannot be done, prints one line
# naming what to install and exits 1.
set -euo pipefail
# How the tests find each package (tests/test_report.py, tests/pg_server.py).
have_chromium() { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }
have_postgresql() { command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
PACKAGES=(
  chromium  # tests/test_report.py opens report.html headless, offline, and checks the rendered plots
  postgresql  # tests/test_workers.py starts a private PostgreSQL server for the distributed-worker tests
  # add further Debian packages here, one per line with the reason, and a have_<name> check above
)
missing=()
for package in "${PACKAGES[@]}"; do
  "have_${package}" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages ready: ${PACKAGES[*]}"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: the tests need ${missing[*]}; install them with your system's package manager, then rerun" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then
  SUDO="sudo"
elif [ "$(id -u)" -ne 0 ]; then
  echo "error: the tests need Debian packages ${missing[*]}; as root run: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages the tests need: ${missing[*]}"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
echo "system packages ready: ${PACKAGES[*]}"
