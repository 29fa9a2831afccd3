"""kill -9 of a single-process run at three moments (loading, mid-trial, final save); each time, rerunning the
same command completes the study with no completed trial lost and no half-written output."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from task_vector_opt.search.study import FINISHED
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
N_TRIALS = 5


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    # Big enough (≈ 40 MB of float32 weights) that loading and saving take a moment to kill into.
    return make_trio(tmp_path_factory.mktemp("trio"), "llama", layers=4, hidden=512)


def command(trio, tmp_path):
    return [sys.executable, str(ROOT / "merge_task_vector_jglue.py"), "--target_model", str(trio["target"]),
            "--base_model", str(trio["base"]), "--tuned_model", str(trio["tuned"]), "--dtype", "float32",
            "--task_search_path", str(ROOT / "lm-evaluation-harness" / "demo"), "--jglue_tasks", "demo_skill",
            "--jglue_limit", "24", "--n_trials", str(N_TRIALS), "--optimize_mode", "layer",
            "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run")]


def study_of(tmp_path):
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    names = optuna.get_all_study_names(storage) if (tmp_path / "run" / "study.db").exists() else []
    return optuna.load_study(study_name=names[0], storage=storage) if names else None


def kill_when(cmd, tmp_path, ready, timeout=300):
    """Start the run, SIGKILL it as soon as ``ready(log_text)`` is true; return the log."""
    log_path = tmp_path / f"killed-{time.time_ns()}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=log, env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.time() + timeout
        try:
            while time.time() < deadline and process.poll() is None:
                if ready(log_path.read_text(errors="replace")):
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
            exited_by_itself = process.poll() is not None and process.returncode != -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    text = log_path.read_text(errors="replace")
    assert not exited_by_itself, text[-3000:]
    assert process.returncode == -signal.SIGKILL
    return text


def rerun_and_check(cmd, tmp_path, completed_before):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    study = study_of(tmp_path)
    finished = {t.number: t for t in study.get_trials(states=FINISHED)}
    assert len(finished) == N_TRIALS
    for trial in completed_before:  # nothing completed was lost or changed
        assert finished[trial.number].value == trial.value and finished[trial.number].params == trial.params
    assert not list(tmp_path.glob(".out.partial-*"))  # no half-written output left
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["best"] == {"trial": study.best_trial.number, "score": study.best_value}
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > 30_000_000
    return study


def test_kill_during_loading(trio, tmp_path):
    cmd = command(trio, tmp_path)
    kill_when(cmd, tmp_path, lambda log: "lm-eval tasks ready" in log)  # next: the models load
    study = study_of(tmp_path)
    assert study is None or not study.get_trials(states=FINISHED)
    assert not (tmp_path / "out").exists()
    rerun_and_check(cmd, tmp_path, [])


def test_kill_mid_trial(trio, tmp_path):
    cmd = command(trio, tmp_path)

    def mid_trial(log):
        if "loaded in" not in log:
            return False
        study = study_of(tmp_path)
        trials = study.get_trials(deepcopy=False) if study else []  # one snapshot, so the counts agree
        finished = [t for t in trials if t.state in FINISHED]
        running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker")]
        return len(finished) >= 2 and bool(running)

    kill_when(cmd, tmp_path, mid_trial)
    killed_study = study_of(tmp_path)
    before = killed_study.get_trials(states=FINISHED)
    # The trial the kill interrupted, read after the kill: the one the storage still holds as running.
    running = killed_study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1, [(t.number, t.state) for t in killed_study.get_trials()]
    assert 2 <= len(before) < N_TRIALS and not (tmp_path / "out").exists()
    study = rerun_and_check(cmd, tmp_path, before)
    trials = study.get_trials(deepcopy=False)
    killed = trials[running[0].number]
    assert killed.state == TrialState.FAIL and "died mid-trial" in killed.user_attrs["fail_reason"]
    retry = [t for t in trials if RetryFailedTrialCallback.retried_trial_number(t) == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params


def test_kill_during_the_final_save(trio, tmp_path):
    cmd = command(trio, tmp_path)
    kill_when(cmd, tmp_path, lambda log: bool(list(tmp_path.glob(".out.partial-*/*.safetensors"))))
    assert not (tmp_path / "out").exists()  # the half-written model never took the output's name
    assert list(tmp_path.glob(".out.partial-*"))  # it was killed mid-save indeed
    before = study_of(tmp_path).get_trials(states=FINISHED)
    assert len(before) == N_TRIALS
    rerun_and_check(cmd, tmp_path, before)


def finished_in_storage(tmp_path) -> int:
    """Trials the run's SQLite file holds as finished, read straight from it, read-only: a poll far cheaper than
    loading the study through Optuna, which competes with the run for the CPU."""
    path = tmp_path / "run" / "study.db"
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()
    except sqlite3.OperationalError:  # the tables are still being created, or a write holds the file
        return 0
    return count


def interrupt_after_two_trials(cmd, tmp_path):
    """Send Ctrl-C (SIGINT) once the storage holds two finished trials; return the finished process.

    The run is given far more trials than it can finish (INTERRUPTED_RUN_TRIALS), so only the state decides
    when the signal goes, never how fast this machine is."""
    log_path = tmp_path / f"interrupted-{time.time_ns()}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=log, env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            deadline = time.time() + 300
            while finished_in_storage(tmp_path) < 2:
                assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
                assert time.time() < deadline, "no two finished trials in 300 s"
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode, log_path.read_text(errors="replace")


INTERRUPTED_RUN_TRIALS = 100_000


@pytest.mark.parametrize("save", [False, True], ids=["plain", "save_on_interrupt"])
def test_ctrl_c_exits_cleanly_and_saves_only_when_asked(trio, tmp_path, save):
    cmd = (command(trio, tmp_path) + ["--n_trials", str(INTERRUPTED_RUN_TRIALS)]
           + (["--save_on_interrupt"] if save else []))
    code, log = interrupt_after_two_trials(cmd, tmp_path)
    assert code == 130, log[-3000:]
    assert "Traceback" not in log and "completed trials are kept" in log
    study = study_of(tmp_path)
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    assert 2 <= len(completed) < INTERRUPTED_RUN_TRIALS
    assert not list(tmp_path.glob(".out.partial-*"))
    if save:
        recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
        assert recipe["best"] == {"trial": study.best_trial.number, "score": study.best_value}
    else:
        assert not (tmp_path / "out").exists()


def test_a_ctrl_c_inside_optunas_bookkeeping_still_counts_as_ctrl_c():
    """Optuna's trial bookkeeping can turn a Ctrl-C that lands in its storage write into its own next error
    (seen: UnboundLocalError, StorageInternalError); the engine still sees the Ctrl-C behind it."""
    from task_vector_opt.engine import ctrl_c_behind

    def bookkeeping():
        try:
            raise KeyboardInterrupt
        finally:
            raise UnboundLocalError("cannot access local variable 'updated_state'")

    with pytest.raises(UnboundLocalError) as caught:
        bookkeeping()
    assert ctrl_c_behind(caught.value)
    assert ctrl_c_behind(KeyboardInterrupt())
    assert not ctrl_c_behind(UnboundLocalError("a plain bug"))
    assert not ctrl_c_behind(RuntimeError("wrapped", ValueError()))
