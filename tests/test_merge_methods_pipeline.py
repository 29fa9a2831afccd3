"""Two task vectors under each merge method, end to end from the JGLUE launcher: search, exact save, resume."""
import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from task_vector_opt.merging.grouping import group_names
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.methods import MergeSettings
from task_vector_opt.merging.task_vector import build_task_vector
from task_vector_opt.search.study import FINISHED
from tiny_models import make_trio

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama")


def launch(trio, tmp_path, n_trials, *extra):
    """run_merge_jglue.sh with its variables overridden by flags (the last value of a flag wins)."""
    argv = ["bash", str(ROOT / "run_merge_jglue.sh"), "--target_model", str(trio["target"]),
            "--base_model", str(trio["base"]), "--tuned_model", f"{trio['tuned']},{trio['target']}",
            "--dtype", "float32", "--cache_dir", str(tmp_path / "cache"), "--task_search_path", str(DEMO_TASKS),
            "--jglue_tasks", "demo_skill", "--jglue_limit", "8", "--n_trials", str(n_trials),
            "--output_dir", str(tmp_path / "out"), "--overwrite_output_dir", "--run_dir", str(tmp_path / "run"),
            *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def load_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def merge_of(trio, recipe):
    """The merge the recipe describes, rebuilt from the models by a fresh Merger."""
    settings = MergeSettings.from_recipe_inputs(recipe["inputs"]["merge"])
    assert settings.method == recipe["inputs"]["merge"]["merge_method"]
    model = AutoModelForCausalLM.from_pretrained(trio["target"], dtype=torch.float32)
    vectors = [build_task_vector(model, trio["base"], Path(t), dtype=torch.float32, store_device="cpu")
               for t in recipe["inputs"]["tuned_model"]]
    merger = Merger(model, vectors, group_names(list(vectors[0]), recipe["inputs"]["optimize_mode"]), "cpu", settings)
    merger.apply(recipe["weights"])
    return model


@pytest.mark.parametrize("method,extra", [("task_arithmetic", ()), ("ties", ("--merge_normalize",)),
                                          ("dare_linear", ("--dare_seed", "11")),
                                          ("dare_ties", ("--density_per_group",))])
def test_two_vectors_search_and_save_exactly_the_best_trials_merge(trio, tmp_path, method, extra):
    done = launch(trio, tmp_path, 3, "--merge_method", method, "--optimize_mode", "parameter", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(tmp_path)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 3
    names = set(trials[2].params)
    assert "v2/self_attn.q_proj" in names and ("density/v2" in names or method == "task_arithmetic"
                                               or "density/v2/self_attn.q_proj" in names)
    assert trials[0].user_attrs["baseline"].startswith("w=1")
    assert all(v == 1.0 for v in trials[0].params.values())  # the baseline: every weight and density 1

    out = tmp_path / "out"
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["weights"] == study.best_params and recipe["inputs"]["merge"]["merge_method"] == method
    assert recipe["inputs"]["tuned_model"] == [str(trio["tuned"]), str(trio["target"])]
    saved = load_file(out / "model.safetensors")
    for name, param in merge_of(trio, recipe).named_parameters():
        assert torch.equal(saved[name], param.detach()), name

    card = (out / "README.md").read_text()
    assert "tuned 2 (added, vector v2)" in card and f"--tuned_model {trio['tuned']},{trio['target']}" in card
    if method != "task_arithmetic":
        assert f"--merge_method {method}" in card
    exported = (out / "mergekit_config.yml").read_text()
    # the target is not the base: mergekit can express the linear methods only
    if method in ("ties", "dare_ties") or "--merge_normalize" in extra:
        assert "cannot reproduce" in exported and yaml.safe_load(exported) is None
    else:
        assert yaml.safe_load(exported)["merge_method"] == method


def test_a_dare_ties_study_resumes_where_it_stopped(trio, tmp_path):
    first = launch(trio, tmp_path, 3, "--merge_method", "dare_ties", "--optimize_mode", "parameter")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {t.number: (t.params, t.value) for t in load_study(tmp_path).get_trials(states=FINISHED)}
    again = launch(trio, tmp_path, 5, "--merge_method", "dare_ties", "--optimize_mode", "parameter")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming: 3 of 5" in again.stderr
    after = {t.number: (t.params, t.value) for t in load_study(tmp_path).get_trials(states=FINISHED)}
    assert len(after) == 5 and all(after[number] == kept for number, kept in before.items())
