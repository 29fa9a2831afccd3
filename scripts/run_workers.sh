#!/usr/bin/env bash
# Run one study with several workers (one per GPU), then save the best model once.
#
#   GPUS="0 1 2 3" STORAGE="postgresql://user:pass@dbhost/optuna" bash scripts/run_workers.sh run_merge_mt_bench.sh
#
# Every worker runs the launcher (any run_merge_*.sh, with its variables as you edited them) with
# CUDA_VISIBLE_DEVICES set to its GPU, the shared --storage and --search_only; extra arguments after the
# launcher go to every worker. When all have finished, the launcher runs once more with --finalize on the
# first GPU: it loads the models, scores the holdout and saves the best model. Workers on other machines can
# join the same study: run the same launcher there with the same STORAGE and --search_only.
#
#   GPUS     GPU indices, one worker each (default: every GPU nvidia-smi lists; "cpu" for one CPU worker;
#            "cpu cpu" for two)
#   STORAGE  an Optuna storage every worker reaches: postgresql://..., mysql://..., or a journal file ending in
#            .log on a shared filesystem (default: runs/shared-study.log, fine on one machine)
#   LOG_DIR  where each worker's log goes (default: runs/workers)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "error: usage: [GPUS=\"0 1\"] [STORAGE=url] bash scripts/run_workers.sh run_merge_xxx.sh [extra flags]" >&2
  exit 2
fi
LAUNCHER="$1"; shift
if [ -z "${GPUS:-}" ]; then
  GPUS="$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr '\n' ' ' || true)"
  GPUS="${GPUS:-cpu}"
fi
STORAGE="${STORAGE:-runs/shared-study.log}"
LOG_DIR="${LOG_DIR:-runs/workers}"
mkdir -p "$LOG_DIR"

pids=()
n=0
for gpu in $GPUS; do
  visible="$gpu"; [ "$gpu" = "cpu" ] && visible=""
  log="$LOG_DIR/worker-$n.log"
  echo "worker $n on ${gpu}: log in $log"
  CUDA_VISIBLE_DEVICES="$visible" bash "$LAUNCHER" --storage "$STORAGE" --search_only "$@" >"$log" 2>&1 &
  pids+=($!)
  n=$((n + 1))
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
if [ "$status" -ne 0 ]; then
  echo "warning: a worker exited with status $status (see $LOG_DIR); completed trials are kept" >&2
fi
first="${GPUS%% *}"; [ "$first" = "cpu" ] && first=""
echo "saving the best model of the study (--finalize)"
CUDA_VISIBLE_DEVICES="$first" bash "$LAUNCHER" --storage "$STORAGE" --finalize "$@"
