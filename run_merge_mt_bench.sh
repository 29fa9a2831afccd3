#!/usr/bin/env bash
# Edit the variables below, then run: bash run_merge_mt_bench.sh
# Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_mt_bench.py --help
# An OpenAI judge needs: export OPENAI_API_KEY=...   (other judges: docs/en/mt-bench.md, "Judges")
set -euo pipefail
cd "$(dirname "$0")"

TARGET_MODEL="NTQAI/chatntq-ja-7b-v1.0"             # model that receives the task vector
BASE_MODEL="mistralai/Mistral-7B-v0.1"              # task vector = TUNED_MODEL - BASE_MODEL
TUNED_MODEL="mistralai/Mistral-7B-Instruct-v0.2"  # several: comma-separated, one task vector each
MERGE_METHOD="task_arithmetic"                      # task_arithmetic | ties | dare_linear | dare_ties
BENCH_NAME="example"                                # FastChat/fastchat/llm_judge/data/<BENCH_NAME>/question.jsonl
JUDGE_MODEL_NAME="gpt-4"                            # gpt-4o, claude-..., azure:<deployment>, hf:<model>, ...
OPTIMIZE_MODE="auto"                                # auto (profile per vector and expert) | profile | layer | all | parameter
SCALE_SEARCH="auto"                                 # auto (on with OPTIMIZE_MODE auto) | on | off: each vector's scale first
N_TRIALS=30
CACHE_DIR="./models"
JUDGE_FILE="FastChat/fastchat/llm_judge/data/judge_prompts.jsonl"
PARALLEL=2                                          # concurrent judge requests
OPTUNA_SAMPLER="CMA-ES"                             # CMA-ES | TPE (the original default) | random | GP | TPE-multivariate
WEIGHT_MIN=0
WEIGHT_MAX=2
OUTPUT_DIR="./model-chatvector"
OPTUNA_SEED=42
# Extra flags, e.g. EXTRA_ARGS="--judge_rating_mode logprob --holdout_fraction 0.3 --prune"
EXTRA_ARGS="${EXTRA_ARGS:-}"

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
# shellcheck disable=SC2086
"$PYTHON" merge_task_vector_mt_bench.py \
  --target_model "$TARGET_MODEL" \
  --base_model "$BASE_MODEL" \
  --tuned_model "$TUNED_MODEL" \
  --merge_method "$MERGE_METHOD" \
  --bench_name "$BENCH_NAME" \
  --judge_model_name "$JUDGE_MODEL_NAME" \
  --optimize_mode "$OPTIMIZE_MODE" \
  --scale_search "$SCALE_SEARCH" \
  --n_trials "$N_TRIALS" \
  --cache_dir "$CACHE_DIR" \
  --judge_file "$JUDGE_FILE" \
  --parallel "$PARALLEL" \
  --optuna_sampler "$OPTUNA_SAMPLER" \
  --weight_min "$WEIGHT_MIN" \
  --weight_max "$WEIGHT_MAX" \
  --output_dir "$OUTPUT_DIR" \
  --optuna_seed "$OPTUNA_SEED" \
  $EXTRA_ARGS "$@"
