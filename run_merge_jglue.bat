@echo off
rem Edit the variables below, then run: run_merge_jglue.bat
rem Every flag is described in docs/en/flags.md (docs/ja/flags.md) and in: python merge_task_vector_jglue.py --help
setlocal

set TARGET_MODEL=NTQAI/chatntq-ja-7b-v1.0
set BASE_MODEL=mistralai/Mistral-7B-v0.1
rem TUNED_MODEL: several models, comma-separated, give one task vector each
set TUNED_MODEL=mistralai/Mistral-7B-Instruct-v0.2
rem MERGE_METHOD: task_arithmetic, ties, dare_linear or dare_ties
set MERGE_METHOD=task_arithmetic
rem OPTIMIZE_MODE: auto (profile per vector and expert), profile, layer, all or parameter
set OPTIMIZE_MODE=auto
rem SCALE_SEARCH: auto (on with OPTIMIZE_MODE auto), on or off: each vector's scale first
set SCALE_SEARCH=auto
rem SEARCH_OBJECTIVE: task (each task's own metric), choice_prob or auto
set SEARCH_OBJECTIVE=task
set N_TRIALS=30
set CACHE_DIR=.\models
rem OPTUNA_SAMPLER: CMA-ES, TPE (the original default), random, GP or TPE-multivariate
set OPTUNA_SAMPLER=CMA-ES
set WEIGHT_MIN=0
set WEIGHT_MAX=2
set OUTPUT_DIR=.\model-chatvector
set OPTUNA_SEED=42
set JGLUE_TASKS=jcommonsenseqa-1.1-0.3,marc_ja-1.1-0.2,jnli-1.3-0.2,jsquad-1.1-0.2
set JGLUE_LIMIT=500,500,500,500
rem Extra flags, e.g. set EXTRA_ARGS=--jglue_data_dir .\JGLUE --batch_size 32
if not defined EXTRA_ARGS set EXTRA_ARGS=

cd /d "%~dp0"
set PYTHON=python
if exist .venv\Scripts\python.exe set PYTHON=.venv\Scripts\python.exe

"%PYTHON%" merge_task_vector_jglue.py ^
  --target_model "%TARGET_MODEL%" ^
  --base_model "%BASE_MODEL%" ^
  --tuned_model "%TUNED_MODEL%" ^
  --merge_method "%MERGE_METHOD%" ^
  --optimize_mode "%OPTIMIZE_MODE%" ^
  --scale_search "%SCALE_SEARCH%" ^
  --search_objective "%SEARCH_OBJECTIVE%" ^
  --n_trials "%N_TRIALS%" ^
  --cache_dir "%CACHE_DIR%" ^
  --optuna_sampler "%OPTUNA_SAMPLER%" ^
  --weight_min "%WEIGHT_MIN%" ^
  --weight_max "%WEIGHT_MAX%" ^
  --output_dir "%OUTPUT_DIR%" ^
  --optuna_seed "%OPTUNA_SEED%" ^
  --jglue_tasks "%JGLUE_TASKS%" ^
  --jglue_limit "%JGLUE_LIMIT%" ^
  %EXTRA_ARGS% %*
exit /b %ERRORLEVEL%
