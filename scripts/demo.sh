#!/usr/bin/env bash
# Quick start 1: set up the environment, then run the offline demo on SmolLM2-135M-Instruct (CPU is enough).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/python -m task_vector_opt.demo "$@"
