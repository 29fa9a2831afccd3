#!/usr/bin/env bash
# Create .venv and install the tool (editable, from pyproject.toml) with the extras named in $1, e.g.
#   bash scripts/setup.sh              the tool only
#   bash scripts/setup.sh demo         + what the offline demo needs (scripts/demo.sh)
#   bash scripts/setup.sh test         + what the tests need (scripts/test.sh)
#   bash scripts/setup.sh wandb,hub    + optional features (extras: wandb, dashboard, hub, postgres; all)
#   bash scripts/setup.sh vision       a second environment, .venv-vision: the test extra on torch 2.14.1 with
#                                      torchvision 0.29.1 (a CUDA build, about 5.5 GB, that runs on the CPU), for
#                                      the tests marked vision (Qwen2-VL's processor needs torchvision; the CPU
#                                      torch of .venv has no matching torchvision). scripts/test.sh runs them there.
# Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-}"
VENV=.venv
# torch first, pinned, so that the other packages do not pull a different (CUDA) build.
# Set TORCH_SPEC (e.g. "torch --index-url https://download.pytorch.org/whl/cu124") on a GPU machine.
TORCH=${TORCH_SPEC:-torch==2.13.0}
CHECK="import torch, transformers, optuna, lm_eval; print('environment ready: torch', torch.__version__, '| transformers', transformers.__version__, '| optuna', optuna.__version__, '| lm-eval', lm_eval.__version__)"
if [ "$EXTRAS" = vision ]; then
  VENV=.venv-vision
  EXTRAS=test
  TORCH="torch==2.14.1 torchvision==0.29.1"  # the pair that installs here; TORCH_SPEC is for .venv only
  CHECK="import torch, torchvision, transformers; print('vision environment ready (.venv-vision): torch', torch.__version__, '| torchvision', torchvision.__version__, '| transformers', transformers.__version__)"
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }  # drop a local mirror's noise, keep the exit status
# shellcheck disable=SC2086
quiet "$VENV/bin/python" -m pip install -q $TORCH
# Editable, so the entry scripts, `python -m task_vector_opt.demo` and the repo's data folders stay one copy.
quiet "$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
"$VENV/bin/python" -c "$CHECK"
