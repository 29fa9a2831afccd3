@echo off
rem Edit the variables below, then run: run_merge_vlm.bat
rem Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_vlm.py --help
rem VLM_METRIC=judge needs a judge, e.g. set JUDGE_MODEL_NAME=gpt-4o and set OPENAI_API_KEY=...   (see docs/en/mt-bench.md, "Judges")
setlocal

set TARGET_MODEL=llava-hf/llava-1.5-7b-hf
set BASE_MODEL=meta-llama/Llama-2-7b-hf
set TUNED_MODEL=elyza/ELYZA-japanese-Llama-2-7b
set VLM_BENCH_FILE=examples\vlm_bench\bench.jsonl
set VLM_METRIC=rouge_l
if not defined JUDGE_MODEL_NAME set JUDGE_MODEL_NAME=
set MAX_NEW_TOKENS=256
rem OPTIMIZE_MODE: auto (profile per vector and expert), profile, layer, all or parameter
set OPTIMIZE_MODE=auto
rem SCALE_SEARCH: auto (on with OPTIMIZE_MODE auto), on or off: each vector's scale first
set SCALE_SEARCH=auto
set N_TRIALS=30
set CACHE_DIR=.\models
rem OPTUNA_SAMPLER: CMA-ES, TPE (the original default), random, GP or TPE-multivariate
set OPTUNA_SAMPLER=CMA-ES
set WEIGHT_MIN=0
set WEIGHT_MAX=2
set OUTPUT_DIR=.\model-chatvector-vlm
set OPTUNA_SEED=42
rem Extra flags, e.g. set EXTRA_ARGS=--holdout_fraction 0.3 --vector_placement cpu --prune
if not defined EXTRA_ARGS set EXTRA_ARGS=

set JUDGE_ARGS=
if defined JUDGE_MODEL_NAME set JUDGE_ARGS=--judge_model_name "%JUDGE_MODEL_NAME%"

cd /d "%~dp0"
set PYTHON=python
if exist .venv\Scripts\python.exe set PYTHON=.venv\Scripts\python.exe

"%PYTHON%" merge_task_vector_vlm.py ^
  --target_model "%TARGET_MODEL%" ^
  --base_model "%BASE_MODEL%" ^
  --tuned_model "%TUNED_MODEL%" ^
  --vlm_bench_file "%VLM_BENCH_FILE%" ^
  --vlm_metric "%VLM_METRIC%" ^
  --max_new_tokens "%MAX_NEW_TOKENS%" ^
  --optimize_mode "%OPTIMIZE_MODE%" ^
  --scale_search "%SCALE_SEARCH%" ^
  --n_trials "%N_TRIALS%" ^
  --cache_dir "%CACHE_DIR%" ^
  --optuna_sampler "%OPTUNA_SAMPLER%" ^
  --weight_min "%WEIGHT_MIN%" ^
  --weight_max "%WEIGHT_MAX%" ^
  --output_dir "%OUTPUT_DIR%" ^
  --optuna_seed "%OPTUNA_SEED%" ^
  %JUDGE_ARGS% %EXTRA_ARGS% %*
exit /b %ERRORLEVEL%
