"""End to end through the JGLUE launcher on tiny models: search, baselines, exact save, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from task_vector_opt.merging.grouping import group_names
from task_vector_opt.merging.merger import Merger
from task_vector_opt.search.study import FINISHED
from task_vector_opt.merging.task_vector import build_task_vector
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama")


def command(trio, tmp_path, n_trials, *extra):
    return [sys.executable, str(ROOT / "merge_task_vector_jglue.py"), "--target_model", str(trio["target"]),
            "--base_model", str(trio["base"]), "--tuned_model", str(trio["tuned"]), "--dtype", "float32",
            "--task_search_path", str(DEMO_TASKS), "--jglue_tasks", "demo_skill", "--jglue_limit", "12",
            "--jglue_holdout_limit", "12", "--n_trials", str(n_trials), "--output_dir", str(tmp_path / "out"),
            "--run_dir", str(tmp_path / "run"), *extra]


def run(cmd, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kwargs)


def load_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def test_run_enqueues_baselines_saves_the_scored_model_exactly_and_writes_the_recipe(trio, tmp_path):
    done = run(command(trio, tmp_path, 4, "--optimize_mode", "parameter", "--holdout_top_k", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(tmp_path)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 4
    assert set(trials[0].params.values()) == {1.0} and set(trials[1].params.values()) == {0.0}
    assert trials[0].user_attrs["baseline"].startswith("w=1") and "elapsed_s" in trials[2].user_attrs

    out = tmp_path / "out"
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["best"] == {"trial": study.best_trial.number, "score": study.best_value}
    assert recipe["weights"] == study.best_params
    assert {"w=0", "w=1", "best"} <= set(recipe["holdout_score"]) and len(recipe["holdout_score"]) <= 5
    assert {"tokenizer.json", "config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    assert "best search score" in done.stdout and str(out) in done.stdout

    # The saved tensors are bit for bit target + w * (tuned - base) with the recipe's weights.
    model = AutoModelForCausalLM.from_pretrained(trio["target"], dtype=torch.float32)
    vector = build_task_vector(model, trio["base"], trio["tuned"], dtype=torch.float32, store_device="cpu")
    Merger(model, vector, group_names(list(vector), "parameter"), "cpu").apply(recipe["weights"])
    saved = load_file(out / "model.safetensors")
    for name, param in model.named_parameters():
        assert torch.equal(saved[name], param.detach()), name


def test_rerunning_a_finished_study_runs_no_new_trial_and_saves_again(trio, tmp_path):
    assert run(command(trio, tmp_path, 3)).returncode == 0
    before = len(load_study(tmp_path).trials)
    again = run(command(trio, tmp_path, 3, "--output_dir", str(tmp_path / "out2")))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(load_study(tmp_path).trials) == before
    assert (tmp_path / "out2" / "merge_recipe.json").is_file()


def test_interrupted_run_resumes_to_n_trials_without_repeating_a_trial(trio, tmp_path):
    cmd = command(trio, tmp_path, 8, "--optimize_mode", "all")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = (tmp_path / "first_run.log").open("w")
    process = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    db = tmp_path / "run" / "study.db"
    deadline = time.time() + 600
    completed_before_kill = []
    while time.time() < deadline and process.poll() is None:
        if db.exists():
            try:
                completed_before_kill = load_study(tmp_path).get_trials(states=FINISHED)
            except Exception:  # the database is being created
                completed_before_kill = []
            if len(completed_before_kill) >= 3:
                break
        time.sleep(0.2)
    exited_by_itself = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    log.close()
    assert not exited_by_itself, (tmp_path / "first_run.log").read_text()[-3000:]
    completed_before_kill = load_study(tmp_path).get_trials(states=FINISHED)
    assert 3 <= len(completed_before_kill) < 8

    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    finished = load_study(tmp_path).get_trials(states=FINISHED)
    assert len(finished) == 8
    by_number = {t.number: t for t in finished}
    for trial in completed_before_kill:  # nothing completed was lost or redone
        assert by_number[trial.number].value == trial.value and by_number[trial.number].params == trial.params
    param_sets = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(param_sets)) == len(param_sets)
