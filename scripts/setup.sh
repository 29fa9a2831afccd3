#!/usr/bin/env bash
# Create .venv and install the tool (editable, from pyproject.toml) with the extras named in $1, e.g.
#   bash scripts/setup.sh              the tool only
#   bash scripts/setup.sh demo         + what the offline demo needs (scripts/demo.sh)
#   bash scripts/setup.sh test         + what the tests need (scripts/test.sh)
#   bash scripts/setup.sh wandb,hub    + optional features (extras: wandb, dashboard, hub, postgres; all)
# Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, pinned, so that the other packages do not pull a different (CUDA) build.
# Set TORCH_SPEC (e.g. "torch --index-url https://download.pytorch.org/whl/cu124") on a GPU machine.
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }  # drop a local mirror's noise, keep the exit status
quiet .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
# Editable, so the entry scripts, `python -m task_vector_opt.demo` and the repo's data folders stay one copy.
quiet .venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
.venv/bin/python -c "import torch, transformers, optuna, lm_eval; print('environment ready: torch', torch.__version__, '| transformers', transformers.__version__, '| optuna', optuna.__version__, '| lm-eval', lm_eval.__version__)"
