#!/usr/bin/env bash
# Edit the variables below, then run: bash run_merge_mt_bench_moe_2_experts.sh
# Builds a Mixtral-style MoE of 2 experts in memory; expert i = TARGET_MODEL_i + w_i * (TUNED_MODEL - BASE_MODEL).
# Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_mt_bench_moe_2_experts.py --help
# An OpenAI judge needs: export OPENAI_API_KEY=...   (other judges: docs/en/mt-bench.md, "Judges")
set -euo pipefail
cd "$(dirname "$0")"

TARGET_MODEL_1="NTQAI/chatntq-ja-7b-v1.0"           # expert 1 (the MoE base by default)
TARGET_MODEL_2="stabilityai/japanese-stablelm-base-gamma-7b"   # expert 2
BASE_MODEL="mistralai/Mistral-7B-v0.1"              # task vector = TUNED_MODEL - BASE_MODEL
TUNED_MODEL="mistralai/Mistral-7B-Instruct-v0.2"
MOE_CONFIG="moe_configs/example_2_experts.yaml"     # mergekit-moe YAML (prompts, gate_mode); "" = random routers
GATE_MODE=""                                        # "" = the config's; or hidden | cheap_embed | random
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
OUTPUT_DIR="./model-chatvector-moe"                 # experts go to ${OUTPUT_DIR}-1 ... -2
OPTUNA_SEED=42
# Extra flags, e.g. EXTRA_ARGS="--save_moe --judge_rating_mode logprob --holdout_fraction 0.3"
EXTRA_ARGS="${EXTRA_ARGS:-}"

MOE_ARGS=()
[ -n "$MOE_CONFIG" ] && MOE_ARGS+=(--moe_config "$MOE_CONFIG")
[ -n "$GATE_MODE" ] && MOE_ARGS+=(--gate_mode "$GATE_MODE")

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
# shellcheck disable=SC2086
"$PYTHON" merge_task_vector_mt_bench_moe_2_experts.py \
  --target_model_1 "$TARGET_MODEL_1" \
  --target_model_2 "$TARGET_MODEL_2" \
  --base_model "$BASE_MODEL" \
  --tuned_model "$TUNED_MODEL" \
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
  ${MOE_ARGS[@]+"${MOE_ARGS[@]}"} \
  $EXTRA_ARGS "$@"
