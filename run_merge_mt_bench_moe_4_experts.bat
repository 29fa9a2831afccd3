@echo off
rem Edit the variables below, then run: run_merge_mt_bench_moe_4_experts.bat
rem Builds a Mixtral-style MoE of 4 experts in memory; expert i = TARGET_MODEL_i + w_i * (TUNED_MODEL - BASE_MODEL).
rem Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_mt_bench_moe_4_experts.py --help
rem An OpenAI judge needs: set OPENAI_API_KEY=...   (other judges: docs/en/mt-bench.md, "Judges")
setlocal

set TARGET_MODEL_1=NTQAI/chatntq-ja-7b-v1.0
set TARGET_MODEL_2=stabilityai/japanese-stablelm-base-gamma-7b
set TARGET_MODEL_3=.\my-mistral-7b-expert-3
set TARGET_MODEL_4=.\my-mistral-7b-expert-4
set BASE_MODEL=mistralai/Mistral-7B-v0.1
set TUNED_MODEL=mistralai/Mistral-7B-Instruct-v0.2
rem mergekit-moe YAML (prompts, gate_mode); leave empty for random routers
set MOE_CONFIG=moe_configs\example_4_experts.yaml
rem empty = the config's gate_mode; or hidden, cheap_embed, random
set GATE_MODE=
set BENCH_NAME=example
set JUDGE_MODEL_NAME=gpt-4
rem OPTIMIZE_MODE: auto (profile per vector and expert), profile, layer, all or parameter
set OPTIMIZE_MODE=auto
rem SCALE_SEARCH: auto (on with OPTIMIZE_MODE auto), on or off: each vector's scale first
set SCALE_SEARCH=auto
set N_TRIALS=30
set CACHE_DIR=.\models
set JUDGE_FILE=FastChat\fastchat\llm_judge\data\judge_prompts.jsonl
set PARALLEL=2
rem OPTUNA_SAMPLER: CMA-ES, TPE (the original default), random, GP or TPE-multivariate
set OPTUNA_SAMPLER=CMA-ES
set WEIGHT_MIN=0
set WEIGHT_MAX=2
rem experts go to %OUTPUT_DIR%-1 ... -4
set OUTPUT_DIR=.\model-chatvector-moe
set OPTUNA_SEED=42
rem Extra flags, e.g. set EXTRA_ARGS=--save_moe --judge_rating_mode logprob --holdout_fraction 0.3
if not defined EXTRA_ARGS set EXTRA_ARGS=

set MOE_ARGS=
if defined MOE_CONFIG set MOE_ARGS=--moe_config "%MOE_CONFIG%"
if defined GATE_MODE set MOE_ARGS=%MOE_ARGS% --gate_mode %GATE_MODE%

cd /d "%~dp0"
set PYTHON=python
if exist .venv\Scripts\python.exe set PYTHON=.venv\Scripts\python.exe

"%PYTHON%" merge_task_vector_mt_bench_moe_4_experts.py ^
  --target_model_1 "%TARGET_MODEL_1%" ^
  --target_model_2 "%TARGET_MODEL_2%" ^
  --target_model_3 "%TARGET_MODEL_3%" ^
  --target_model_4 "%TARGET_MODEL_4%" ^
  --base_model "%BASE_MODEL%" ^
  --tuned_model "%TUNED_MODEL%" ^
  --bench_name "%BENCH_NAME%" ^
  --judge_model_name "%JUDGE_MODEL_NAME%" ^
  --optimize_mode "%OPTIMIZE_MODE%" ^
  --scale_search "%SCALE_SEARCH%" ^
  --n_trials "%N_TRIALS%" ^
  --cache_dir "%CACHE_DIR%" ^
  --judge_file "%JUDGE_FILE%" ^
  --parallel "%PARALLEL%" ^
  --optuna_sampler "%OPTUNA_SAMPLER%" ^
  --weight_min "%WEIGHT_MIN%" ^
  --weight_max "%WEIGHT_MAX%" ^
  --output_dir "%OUTPUT_DIR%" ^
  --optuna_seed "%OPTUNA_SEED%" ^
  %MOE_ARGS% %EXTRA_ARGS% %*
exit /b %ERRORLEVEL%
