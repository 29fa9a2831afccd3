#!/usr/bin/env bash
# Edit the variables below, then run: bash run_merge_vlm.sh
# Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_vlm.py --help
# VLM_METRIC=judge needs a judge, e.g. JUDGE_MODEL_NAME="gpt-4o" and: export OPENAI_API_KEY=...   (see docs/en/mt-bench.md, "Judges")
set -euo pipefail
cd "$(dirname "$0")"

TARGET_MODEL="llava-hf/llava-1.5-7b-hf"             # vision-language model whose language model gets the vector
BASE_MODEL="meta-llama/Llama-2-7b-hf"               # task vector = TUNED_MODEL - BASE_MODEL (the VLM's LM family)
TUNED_MODEL="elyza/ELYZA-japanese-Llama-2-7b"
VLM_BENCH_FILE="examples/vlm_bench/bench.jsonl"     # JSONL: question, image (relative path), answer[, id, category]
VLM_METRIC="rouge_l"                                # rouge_l | judge
JUDGE_MODEL_NAME="${JUDGE_MODEL_NAME:-}"            # with VLM_METRIC=judge: gpt-4o, claude-..., hf:<model>, ...
MAX_NEW_TOKENS=256
OPTIMIZE_MODE="auto"                                # auto (profile per vector and expert) | profile | layer | all | parameter
SCALE_SEARCH="auto"                                 # auto (on with OPTIMIZE_MODE auto) | on | off: each vector's scale first
N_TRIALS=30
CACHE_DIR="./models"
OPTUNA_SAMPLER="CMA-ES"                             # CMA-ES | TPE (the original default) | random | GP | TPE-multivariate
WEIGHT_MIN=0
WEIGHT_MAX=2
OUTPUT_DIR="./model-chatvector-vlm"
OPTUNA_SEED=42
# Extra flags, e.g. EXTRA_ARGS="--holdout_fraction 0.3 --vector_placement cpu --prune"
EXTRA_ARGS="${EXTRA_ARGS:-}"

JUDGE_ARGS=()
if [ -n "$JUDGE_MODEL_NAME" ]; then JUDGE_ARGS=(--judge_model_name "$JUDGE_MODEL_NAME"); fi

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
# shellcheck disable=SC2086
"$PYTHON" merge_task_vector_vlm.py \
  --target_model "$TARGET_MODEL" \
  --base_model "$BASE_MODEL" \
  --tuned_model "$TUNED_MODEL" \
  --vlm_bench_file "$VLM_BENCH_FILE" \
  --vlm_metric "$VLM_METRIC" \
  --max_new_tokens "$MAX_NEW_TOKENS" \
  --optimize_mode "$OPTIMIZE_MODE" \
  --scale_search "$SCALE_SEARCH" \
  --n_trials "$N_TRIALS" \
  --cache_dir "$CACHE_DIR" \
  --optuna_sampler "$OPTUNA_SAMPLER" \
  --weight_min "$WEIGHT_MIN" \
  --weight_max "$WEIGHT_MAX" \
  --output_dir "$OUTPUT_DIR" \
  --optuna_seed "$OPTUNA_SEED" \
  ${JUDGE_ARGS[@]+"${JUDGE_ARGS[@]}"} \
  $EXTRA_ARGS "$@"
