#!/usr/bin/env bash
# Create .venv and install everything the tool, the demo and the tests need. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first, pinned, so that the requirements do not pull a different (CUDA) build.
# Set TORCH_SPEC (e.g. "torch --index-url https://download.pytorch.org/whl/cu124") on a GPU machine.
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }  # drop a local mirror's noise, keep the exit status
quiet .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
quiet .venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -c "import torch, transformers, optuna, lm_eval; print('environment ready: torch', torch.__version__, '| transformers', transformers.__version__, '| optuna', optuna.__version__, '| lm-eval', lm_eval.__version__)"
