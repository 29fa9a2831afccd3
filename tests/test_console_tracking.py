"""The trial progress bar (best score in its postfix, nested bars do not break it) and --wandb logging."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SEARCH_WITH_NESTED_BARS = """
import logging, sys
sys.path[:0] = [{root!r}, {tests!r}]
import optuna
from tqdm.auto import tqdm
from finished_study import LAYERS, synthetic_score
from task_vector_opt.search.study import make_objective, open_storage, open_study, run_search
logging.basicConfig(level=logging.INFO)
optuna.logging.set_verbosity(optuna.logging.WARNING)

def score(weights, trial):
    for _ in tqdm(range(3), desc="answering", leave=False):  # like generation / judging inside a trial
        pass
    logging.getLogger("x").info("inner log line %d", trial.number)
    return synthetic_score(weights, trial)

study = open_study(open_storage({storage!r}), "bars", "TPE", 0)
run_search(study, 5, make_objective(LAYERS, 0, 2, score))
print("BEST", round(study.best_value, 4))
"""


def test_one_trial_bar_ends_at_n_of_n_with_the_best_score_and_nested_bars_cleared(tmp_path):
    code = SEARCH_WITH_NESTED_BARS.format(root=str(ROOT), tests=str(ROOT / "tests"),
                                          storage=f"sqlite:///{tmp_path / 's.db'}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    best = done.stdout.split("BEST ")[1].strip()
    segments = [s for line in done.stderr.split("\n") for s in line.split("\r") if s.strip()]
    trial_bars = [s for s in segments if s.startswith("trials:")]
    assert trial_bars[-1].startswith("trials: 100%") and "5/5" in trial_bars[-1]
    assert f"best={float(best):.4f}" in trial_bars[-1]
    assert sum("inner log line" in s for s in segments) == 5  # log lines printed whole, above the bar
    # the nested bars never leave a finished line behind (leave=False): no "answering: 100%" that stays
    last_lines = [line.split("\r")[-1] for line in done.stderr.split("\n")]
    assert not any(line.startswith("answering") and "100%" in line for line in last_lines)


def test_wandb_offline_run_logs_each_trials_score_weights_and_metrics(tmp_path):
    code = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from finished_study import LAYERS, synthetic_score
from task_vector_opt.search.study import make_objective, open_storage, open_study, run_search
from task_vector_opt.outputs.tracking import WandbTracker
study = open_study(open_storage("sqlite:///{tmp_path / 's.db'}"), "wb-test", "TPE", 0)
tracker = WandbTracker("wb-test", {{"optimize_mode": "layer"}})
run_search(study, 3, make_objective(LAYERS, 0, 2, synthetic_score), [tracker])
tracker.finish()
print("SCORES", *[repr(t.value) for t in study.trials])
"""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true",
               WANDB_PROJECT="tvo-test")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = run_file.read_bytes()  # protobuf records: keys and JSON values are stored as plain strings
    for key in (b"score", b"best_score", b"weights/layer_00", b"weights/norm", b"metrics/demo_skill",
                b"metrics/judge/cost_usd", b"metrics/elapsed_s", b"tvo-test", b"wb-test"):
        assert key in records, key
    for value in done.stdout.split("SCORES ")[1].split():
        assert value.encode() in records, value
