"""Scale-out on a real PostgreSQL: two worker processes share one study, one is killed with SIGKILL
mid-trial, the study still reaches n_trials with the killed trial retried, and --finalize saves the best model.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from pg_server import postgres_server
from task_vector_opt.search.study import FINISHED, open_storage
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
N_TRIALS = 20


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def worker_command(trio, tmp_path, storage, *extra):
    return [sys.executable, str(ROOT / "merge_task_vector_jglue.py"), "--target_model", str(trio["target"]),
            "--base_model", str(trio["base"]), "--tuned_model", str(trio["tuned"]), "--dtype", "float32",
            "--task_search_path", str(DEMO_TASKS), "--jglue_tasks", "demo_skill", "--jglue_limit", "60",
            "--n_trials", str(N_TRIALS), "--optimize_mode", "parameter", "--storage", storage,
            "--study_name", "shared", "--heartbeat_interval", "0.5", "--run_dir", str(tmp_path / "run"),
            "--output_dir", str(tmp_path / "out"), *extra]


def running_trial_of(study: optuna.Study, pid: int):
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker", "").split(":")[1:2] == [str(pid)]:
            return trial
    return None


def test_two_workers_share_a_study_survive_a_sigkill_and_finalize_saves_the_best(tmp_path, postgres_url):
    trio = make_trio(tmp_path / "models", "llama")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = worker_command(trio, tmp_path, postgres_url, "--search_only")
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(2)]
    victim = subprocess.Popen(cmd, stdout=logs[0], stderr=logs[0], env=env)
    survivor = subprocess.Popen(cmd, stdout=logs[1], stderr=logs[1], env=env)
    storage = optuna.storages.RDBStorage(postgres_url)  # one connection pool for all the polling
    killed = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and victim.poll() is None:
            try:
                study = optuna.load_study(study_name="shared", storage=storage)
            except KeyError:  # not created yet
                time.sleep(0.2)
                continue
            trial = running_trial_of(study, victim.pid)
            if trial is not None:
                victim.send_signal(signal.SIGKILL)
                killed = trial.number
                break
            time.sleep(0.05)
        victim.wait(timeout=60)
        assert killed is not None, (tmp_path / "worker0.log").read_text()[-6000:]
        assert survivor.wait(timeout=600) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
        for log in logs:
            log.close()

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len([t for t in trials if t.state in FINISHED]) >= N_TRIALS
    # The trial the kill interrupted, read afterwards from the storage: the victim's one failed trial, not left
    # RUNNING. (The trial seen running before the kill may have completed in the instant before the signal landed.)
    killed_trials = [t for t in trials if t.state == TrialState.FAIL
                     and t.user_attrs.get("worker", "").split(":")[1:2] == [str(victim.pid)]]
    assert len(killed_trials) == 1, [(t.number, t.state, t.user_attrs.get("worker")) for t in trials]
    killed_trial = killed_trials[0]
    killed = killed_trial.number
    retries = [t for t in trials if RetryFailedTrialCallback.retried_trial_number(t) == killed]
    assert retries and retries[0].state == TrialState.COMPLETE and retries[0].params == killed_trial.params
    baselines = [t.user_attrs["baseline"] for t in trials if "baseline" in t.user_attrs and t.state in FINISHED]
    assert sorted(baselines) == sorted(set(baselines)) and len(baselines) == 2  # enqueued once, not per worker
    workers = {t.user_attrs["worker"].split(":")[1] for t in trials if t.state == TrialState.COMPLETE}
    assert workers == {str(victim.pid), str(survivor.pid)} or workers == {str(survivor.pid)}
    assert not (tmp_path / "out").exists()  # --search_only workers save nothing

    finalize = subprocess.run(worker_command(trio, tmp_path, postgres_url, "--finalize"), capture_output=True,
                              text=True, env=env, timeout=600)
    assert finalize.returncode == 0, finalize.stderr[-3000:]
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == len(trials)  # no search
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["best"] == {"trial": study.best_trial.number, "score": study.best_value}
    assert recipe["weights"] == study.best_params


def test_finalize_without_a_study_is_a_usage_error_before_loading(tmp_path, postgres_url):
    trio = make_trio(tmp_path / "models", "llama")
    done = subprocess.run(worker_command(trio, tmp_path, postgres_url, "--finalize", "--study_name", "nothing"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --finalize: there is no study 'nothing' in this storage; run the search first (the same command "
        "without --finalize), or pass its --study_name"]


def test_an_unreachable_storage_is_a_usage_error_up_front(tmp_path):
    trio = make_trio(tmp_path / "models", "llama")
    done = subprocess.run(worker_command(trio, tmp_path, "postgresql+psycopg2://u:secretpw@127.0.0.1:1/db",
                                         "--dry_run"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: --storage: Optuna cannot open 'postgresql+psycopg2://u:***@127.0.0.1:1/db'")
    assert "secretpw" not in done.stderr + done.stdout


def test_run_workers_script_runs_two_workers_on_a_journal_file_then_finalizes(tmp_path):
    trio = make_trio(tmp_path / "models", "llama")
    journal = tmp_path / "shared.log"
    overrides = ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
                 str(trio["tuned"]), "--dtype", "float32", "--task_search_path", str(DEMO_TASKS), "--jglue_tasks",
                 # Trials long enough (400 documents) and many enough that both workers must share them: with
                 # 24 documents a trial took 0.07 s and the first worker could finish the study before the
                 # second had loaded its models.
                 "demo_skill", "--jglue_limit", "400", "--n_trials", "30", "--study_name", "journal-study",
                 "--run_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out"), "--cache_dir",
                 str(tmp_path / "hf")]
    env = dict(os.environ, OMP_NUM_THREADS="1", GPUS="cpu cpu", STORAGE=str(journal), LOG_DIR=str(tmp_path / "logs"),
               PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "run_workers.sh"), "run_merge_jglue.sh", *overrides],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    logs = "".join(p.read_text() for p in sorted((tmp_path / "logs").glob("*.log")))
    assert done.returncode == 0, (done.stdout + done.stderr + logs)[-4000:]
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="journal-study",
                              storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    finished = study.get_trials(states=FINISHED)
    assert len(finished) >= 30
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both workers pulled trials
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["worker-0.log", "worker-1.log"]
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["best"] == {"trial": study.best_trial.number, "score": study.best_value}


OPEN_AT = """
import sys, time
from task_vector_opt.search.study import open_storage
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process opens the new database at the same moment
open_storage(sys.argv[1])
"""


def test_workers_that_create_a_new_sqlite_database_at_the_same_moment_all_open_it(tmp_path):
    # The process that loses the race to create the tables finds one the winner has just made; it opens again.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'round{round_}' / 'study.db'}"
        start = time.time() + 8  # after every interpreter has imported optuna
        processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT, url, str(start)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        for process in processes:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-2000:]
        assert optuna.get_all_study_names(url) == []  # one complete, empty database


POP_AT = """
import json, sys, time
import optuna
from task_vector_opt.search.study import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="queue", storage=open_storage(sys.argv[1]))
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process starts popping at the same moment
popped = []
while True:
    trial = study.ask()  # takes a waiting (enqueued) trial while there is one: numbers 0 to 119
    if trial.number >= 120:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the queue is empty: a fresh trial, not ours
        break
    popped.append(trial.number)
    study.tell(trial, float(trial.number))
print(json.dumps(popped))
"""


def test_workers_on_one_sqlite_database_take_each_enqueued_trial_once(tmp_path):
    # SQLite ignores SELECT ... FOR UPDATE, with which Optuna takes a waiting trial; without a transaction that
    # holds the write lock from its first read, two workers can both take the same enqueued trial (the scale
    # stage's points), score it twice, and the second one's tell fails ("Cannot tell a COMPLETE trial").
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name="queue", storage=open_storage(url))
    for i in range(120):
        study.enqueue_trial({"w": i / 100})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.time() + 8  # after every interpreter has imported optuna
    processes = [subprocess.Popen([sys.executable, "-c", POP_AT, url, str(start)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    popped = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        popped.append(json.loads(out.strip().splitlines()[-1]))
    taken = [number for numbers in popped for number in numbers]
    assert sorted(taken) == list(range(120))  # every enqueued trial taken, none twice
    assert sum(bool(numbers) for numbers in popped) >= 2  # they did run side by side
