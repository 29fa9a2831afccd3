#!/usr/bin/env bash
# Edit the variables below, then run: bash run_merge_jglue.sh
# Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_jglue.py --help
set -euo pipefail
cd "$(dirname "$0")"

TARGET_MODEL="NTQAI/chatntq-ja-7b-v1.0"             # model that receives the task vector
BASE_MODEL="mistralai/Mistral-7B-v0.1"              # task vector = TUNED_MODEL - BASE_MODEL
TUNED_MODEL="mistralai/Mistral-7B-Instruct-v0.2"  # several: comma-separated, one task vector each
MERGE_METHOD="task_arithmetic"                      # task_arithmetic | ties | dare_linear | dare_ties
OPTIMIZE_MODE="auto"                                # auto (profile per vector and expert) | profile | layer | all | parameter
SCALE_SEARCH="auto"                                 # auto (on with OPTIMIZE_MODE auto) | on | off: each vector's scale first
SEARCH_OBJECTIVE="task"                             # task (each task's own metric) | choice_prob | auto
N_TRIALS=30
CACHE_DIR="./models"
OPTUNA_SAMPLER="CMA-ES"                             # CMA-ES | TPE (the original default) | random | GP | TPE-multivariate
WEIGHT_MIN=0
WEIGHT_MAX=2
OUTPUT_DIR="./model-chatvector"
OPTUNA_SEED=42
JGLUE_TASKS="jcommonsenseqa-1.1-0.3,marc_ja-1.1-0.2,jnli-1.3-0.2,jsquad-1.1-0.2"
JGLUE_LIMIT="500,500,500,500"
# Extra flags, e.g. EXTRA_ARGS="--jglue_data_dir ./JGLUE --batch_size 32 --storage sqlite:///study.db"
EXTRA_ARGS="${EXTRA_ARGS:-}"

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
# shellcheck disable=SC2086
"$PYTHON" merge_task_vector_jglue.py \
  --target_model "$TARGET_MODEL" \
  --base_model "$BASE_MODEL" \
  --tuned_model "$TUNED_MODEL" \
  --merge_method "$MERGE_METHOD" \
  --optimize_mode "$OPTIMIZE_MODE" \
  --scale_search "$SCALE_SEARCH" \
  --search_objective "$SEARCH_OBJECTIVE" \
  --n_trials "$N_TRIALS" \
  --cache_dir "$CACHE_DIR" \
  --optuna_sampler "$OPTUNA_SAMPLER" \
  --weight_min "$WEIGHT_MIN" \
  --weight_max "$WEIGHT_MAX" \
  --output_dir "$OUTPUT_DIR" \
  --optuna_seed "$OPTUNA_SEED" \
  --jglue_tasks "$JGLUE_TASKS" \
  --jglue_limit "$JGLUE_LIMIT" \
  $EXTRA_ARGS "$@"
