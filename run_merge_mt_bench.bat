@echo off
rem Edit the variables below, then run: run_merge_mt_bench.bat
rem Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_mt_bench.py --help
rem An OpenAI judge needs: set OPENAI_API_KEY=...   (other judges: docs/en/mt-bench.md, "Judges")
setlocal

set TARGET_MODEL=NTQAI/chatntq-ja-7b-v1.0
set BASE_MODEL=mistralai/Mistral-7B-v0.1
rem TUNED_MODEL: several models, comma-separated, give one task vector each
set TUNED_MODEL=mistralai/Mistral-7B-Instruct-v0.2
rem MERGE_METHOD: task_arithmetic, ties, dare_linear or dare_ties
set MERGE_METHOD=task_arithmetic
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
set OUTPUT_DIR=.\model-chatvector
set OPTUNA_SEED=42
rem Extra flags, e.g. set EXTRA_ARGS=--judge_rating_mode logprob --holdout_fraction 0.3
if not defined EXTRA_ARGS set EXTRA_ARGS=

cd /d "%~dp0"
set PYTHON=python
if exist .venv\Scripts\python.exe set PYTHON=.venv\Scripts\python.exe

"%PYTHON%" merge_task_vector_mt_bench.py ^
  --target_model "%TARGET_MODEL%" ^
  --base_model "%BASE_MODEL%" ^
  --tuned_model "%TUNED_MODEL%" ^
  --merge_method "%MERGE_METHOD%" ^
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
  %EXTRA_ARGS% %*
exit /b %ERRORLEVEL%
