"""Search strategies end to end on tiny models: each sampler, profile mode, pruning with its cost, the verdict."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from task_vector_opt import engine
from task_vector_opt.merging.grouping import group_names, profile_weights
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.task_vector import build_task_vector
from task_vector_opt.search.samplers import SAMPLERS, cma_start, make_sampler
from task_vector_opt.search.space import search_space
from task_vector_opt.search.study import FINISHED
from cli_checks import expect_usage_error, jglue_in_process, refuse_model_loads
from tiny_models import make_trio

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
LAYERS = 5




@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama", layers=LAYERS)




def argv(trio, tmp_path, n_trials, *extra):
    return ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--dtype", "float32", "--device", "cpu", "--task_search_path", str(DEMO_TASKS),
            "--jglue_tasks", "demo_skill", "--jglue_limit", "8", "--jglue_holdout_limit", "8", "--batch_size", "8",
            "--n_trials", str(n_trials), "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            "--log_level", "WARNING", *extra]


def load_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


# ------------------------------------------------------------------------------------------------ samplers

@pytest.mark.parametrize("sampler", ["random", "GP", "CMA-ES", "TPE-multivariate"])
def test_each_sampler_runs_a_search_end_to_end_and_saves_the_best(trio, tmp_path, sampler, capsys):
    jglue_in_process(argv(trio, tmp_path, 4, "--optuna_sampler", sampler, "--optimize_mode", "parameter"))
    study = load_study(tmp_path)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 4
    assert study.user_attrs["inputs"]["optuna_sampler"] == sampler
    assert {t.params[next(iter(t.params))] for t in trials[2:]} - {0.0, 1.0}  # the sampler proposed new weights
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["weights"] == study.best_params
    assert "verdict" in capsys.readouterr().out


def test_cma_es_starts_at_plain_addition_where_the_range_allows_it():
    params = ["layer_00", "layer_01", "norm"]
    assert make_sampler("CMA-ES", 0, params, 0.0, 2.0)._x0 is None  # Optuna's start, the middle, is w = 1
    assert make_sampler("CMA-ES", 0, params, -1.0, 2.0)._x0 == dict.fromkeys(params, 1.0)
    assert cma_start(params, 1.5, 3.0) == dict.fromkeys(params, 1.5)  # w = 1 outside the range: nearest bound


@pytest.mark.parametrize("low, high", [(0.0, 2.0), (-1.0, 2.0)])
def test_cma_es_first_proposals_centre_on_w_1_with_a_step_of_a_sixth_of_the_range(low, high):
    params = [f"layer_{i:02d}" for i in range(6)]
    study = optuna.create_study(direction="maximize", sampler=make_sampler("CMA-ES", 3, params, low, high))
    study.optimize(lambda t: -sum(t.suggest_float(p, low, high) for p in params), n_trials=9)
    first = np.array([[t.params[p] for p in params] for t in study.trials[1:9]])  # trial 0: independent
    assert abs(first.mean() - 1.0) < 0.2
    assert 0.5 * (high - low) / 6 < first.std() < 1.5 * (high - low) / 6


def test_every_sampler_name_builds_an_optuna_sampler():
    for name in SAMPLERS:
        assert isinstance(make_sampler(name, 0, ["a", "b"], 0.0, 2.0), optuna.samplers.BaseSampler)


# ------------------------------------------------------------------------------------------------ profiles

def test_profile_weights_are_exactly_the_linear_interpolation_of_the_knots():
    # 5 layers over 3 knots: layers 0, 2, 4 sit on the knots, layers 1 and 3 halfway between
    assert profile_weights([0.0, 1.0, 0.5], 5) == [0.0, 0.5, 1.0, 0.75, 0.5]
    assert profile_weights([0.25, 1.75], 4) == [0.25, 0.75, 1.25, 1.75]
    assert profile_weights([0.3], 7) == [0.3] * 7
    rng = np.random.default_rng(0)
    for n_knots, n_layers in ((2, 32), (4, 30), (7, 7), (5, 24)):
        knots = rng.uniform(0, 2, n_knots)
        expected = np.interp(np.arange(n_layers) / (n_layers - 1), np.linspace(0, 1, n_knots), knots)
        np.testing.assert_allclose(profile_weights(list(knots), n_layers), expected, rtol=0, atol=1e-12)
        on_knots = profile_weights(list(knots), n_layers)
        assert on_knots[0] == knots[0] and on_knots[-1] == knots[-1]  # the ends are the knots, bit for bit


def test_profile_space_proposes_knots_and_keeps_embeddings_norm_and_lm_head_their_own():
    groups = ["embed_tokens", *[f"layer_{i:02d}" for i in range(5)], "norm", "lm_head"]
    space = search_space(groups, "profile", 2)
    assert space.params == ["knot_0", "knot_1", "embed_tokens", "norm", "lm_head"]
    weights = space.weights({"knot_0": 0.0, "knot_1": 2.0, "embed_tokens": 0.3, "norm": 0.6, "lm_head": 0.9})
    assert weights == {"embed_tokens": 0.3, "layer_00": 0.0, "layer_01": 0.5, "layer_02": 1.0, "layer_03": 1.5,
                       "layer_04": 2.0, "norm": 0.6, "lm_head": 0.9}
    assert space.weights(dict.fromkeys(space.params, 1.0)) == dict.fromkeys(groups, 1.0)  # the w=1 baseline


def test_profile_mode_searches_knots_and_saves_the_interpolated_layer_weights(trio, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "merge_task_vector_jglue.py"),
                           *argv(trio, tmp_path, 4, "--optimize_mode", "profile", "--profile_knots", "3",
                                 "--optuna_sampler", "CMA-ES")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(tmp_path)
    best = study.best_trial
    assert set(best.params) == {"knot_0", "knot_1", "knot_2", "embed_tokens", "norm", "lm_head"}
    layer_weights = profile_weights([best.params[f"knot_{i}"] for i in range(3)], LAYERS)
    expected = {f"layer_{i:02d}": w for i, w in enumerate(layer_weights)}
    out = tmp_path / "out"
    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert {k: v for k, v in recipe["weights"].items() if k.startswith("layer_")} == expected
    assert recipe["weights"]["norm"] == best.params["norm"] and recipe["inputs"]["profile_knots"] == 3
    assert recipe["profile_knots"] == {f"knot_{i}": best.params[f"knot_{i}"] for i in range(3)}
    assert best.user_attrs["weights"] == recipe["weights"]
    mergekit = (out / "mergekit_config.yml").read_text()
    for i, w in enumerate(layer_weights):
        assert f"layers.{i}." in mergekit and repr(float(w)) in mergekit
    assert "Profile knots" in (out / "report.html").read_text()

    # The saved model is exactly target + w * (tuned - base) with the interpolated layer weights.
    model = AutoModelForCausalLM.from_pretrained(trio["target"], dtype=torch.float32)
    vector = build_task_vector(model, trio["base"], trio["tuned"], dtype=torch.float32, store_device="cpu")
    Merger(model, vector, group_names(list(vector), "profile"), "cpu").apply(recipe["weights"])
    saved = load_file(out / "model.safetensors")
    for name, param in model.named_parameters():
        assert torch.equal(saved[name], param.detach()), name


def test_the_dry_run_plan_counts_the_knots_and_the_non_layer_weights(trio, tmp_path, capsys, no_loads):
    from task_vector_opt.cli.flags import run_cli

    run_cli(jglue_in_process, argv(trio, tmp_path, 3, "--optimize_mode", "profile", "--profile_knots", "2", "--dry_run"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["optimize_mode"] == "profile" and plan["weights"] == 2 + 3  # knots + embed_tokens, norm, lm_head


def test_a_profile_study_resumes_with_the_same_knots_and_no_repeated_proposal(trio, tmp_path):
    jglue_in_process(argv(trio, tmp_path, 3, "--optimize_mode", "profile", "--profile_knots", "2"))
    jglue_in_process(argv(trio, tmp_path, 5, "--optimize_mode", "profile", "--profile_knots", "2", "--study_name",
                    load_study(tmp_path).study_name, "--output_dir", str(tmp_path / "out2")))
    trials = load_study(tmp_path).get_trials(states=FINISHED)
    assert len(trials) == 5 and all(set(t.params) == {"knot_0", "knot_1", "embed_tokens", "norm", "lm_head"}
                                    for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5


def test_two_workers_share_a_cma_es_profile_study_and_finalize_saves_its_best(trio, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = ["--optimize_mode", "profile", "--profile_knots", "2", "--optuna_sampler", "CMA-ES", "--storage", storage,
              "--study_name", "shared"]
    jglue_in_process(argv(trio, tmp_path, 3, *shared, "--search_only"))
    jglue_in_process(argv(trio, tmp_path, 5, *shared, "--search_only"))  # joins the study: the seed is shifted
    jglue_in_process(argv(trio, tmp_path, 5, *shared, "--finalize"))
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 5 and len({tuple(sorted(t.params.items())) for t in trials}) == 5
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["best"]["trial"] == study.best_trial.number and recipe["weights"] == study.best_trial.user_attrs[
        "weights"]


# ------------------------------------------------------------------------------------------------ pruning

def test_pruned_trials_are_recorded_as_pruned_with_the_items_they_cost(trio, tmp_path, monkeypatch, capsys):
    # A pruner that stops every trial it may (baselines always run to the end): the run's own wiring decides.
    monkeypatch.setattr("task_vector_opt.evaluation.jglue.make_pruner",
                        lambda name: optuna.pruners.ThresholdPruner(lower=2.0))
    jglue_in_process(argv(trio, tmp_path, 4, "--prune", "--pruner", "median", "--jglue_chunks", "4", "--scale_search",
                          "off"))
    study = load_study(tmp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    for trial in study.trials[2:]:
        assert trial.user_attrs["items_scored"] == 2  # the first of 4 chunks of 8 documents
        assert list(trial.intermediate_values) == [0]
    assert [t.user_attrs["items_scored"] for t in study.trials[:2]] == [8, 8]
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["items_scored"] == 8 + 8 + 2 + 2
    assert "20 search items scored" in (tmp_path / "out" / "report.html").read_text()
    assert "items scored     : 20" in capsys.readouterr().out
    # the verdict pairs the 8 held-out documents and is said in the recipe, the report and the model card
    assert recipe["holdout_verdict"]["vs w=1"]["n_items"] == 8 and len(recipe["holdout_verdict"]["sentences"]) == 2
    assert recipe["holdout_verdict"]["sentences"][0] in (tmp_path / "out" / "report.html").read_text()
    assert "Verdict: " + recipe["holdout_verdict"]["sentences"][0] in (tmp_path / "out" / "README.md").read_text()


def test_with_prune_the_search_reports_after_each_chunk_of_interleaved_documents(trio, tmp_path, monkeypatch):
    import lm_eval.evaluator

    seen: list[list[int]] = []
    real = lm_eval.evaluator.evaluate

    def spy(**kwargs):
        seen.append(list(next(iter(kwargs["samples"].values()))))
        return real(**kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    jglue_in_process(argv(trio, tmp_path, 3, "--prune", "--jglue_chunks", "3", "--holdout_top_k", "1"))
    study = load_study(tmp_path)
    assert seen[:3] == [[0, 3, 6], [1, 4, 7], [2, 5]]  # chunk k: every third document from the k-th
    assert all(list(t.intermediate_values) == [0, 1] for t in study.trials)  # none after the last chunk
    assert [8, 9, 10, 11, 12, 13, 14, 15] in seen  # the holdout: one call, never chunked


# ------------------------------------------------------------------------------------------------ both skills

def test_with_two_tasks_summary_recipe_and_report_show_each_tasks_held_out_score(trio, tmp_path, capsys):
    run = argv(trio, tmp_path, 3)
    run[run.index("demo_skill")] = "demo_target:0.5,demo_skill:0.5"
    jglue_in_process(run)
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    parts = recipe["holdout_score_per_task"]
    assert {"w=0", "w=1", "best"} <= set(parts)
    for label, tasks in parts.items():
        assert set(tasks) == {"demo_target", "demo_skill"}
        # the held-out score is the equal-weight mean of the two tasks' scores
        assert recipe["holdout_score"][label] == pytest.approx((tasks["demo_target"] + tasks["demo_skill"]) / 2)
    table = capsys.readouterr().out.split("=== task vector optimization finished ===")[1]
    header = next(line for line in table.splitlines() if "held-out" in line and "merge" in line)
    assert header.split()[-2:] == ["demo_target", "demo_skill"]
    w0_row = next(line for line in table.splitlines() if line.strip().startswith("w=0"))
    assert w0_row.split()[-2:] == [f"{parts['w=0']['demo_target']:.4f}", f"{parts['w=0']['demo_skill']:.4f}"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "held-out demo_target" in report and f"{parts['best']['demo_skill']:.4f}" in report
    card = (tmp_path / "out" / "README.md").read_text()  # the model card's score table has the same columns
    header = next(line for line in card.splitlines() if line.startswith("| merge | search score"))
    assert header.endswith("| held-out demo_target | held-out demo_skill |")
    row = next(line for line in card.splitlines() if line.startswith("| w=0"))
    assert row.endswith(f"| {parts['w=0']['demo_target']:.4f} | {parts['w=0']['demo_skill']:.4f} |")


# ------------------------------------------------------------------------------------------------ bad input

@pytest.fixture
def no_loads(monkeypatch):
    refuse_model_loads(monkeypatch, engine)


@pytest.mark.parametrize("extra, flag, fragment", [
    (["--optimize_mode", "profile", "--profile_knots", "0"], "--profile_knots", "at least 1"),
    (["--optimize_mode", "profile", "--profile_knots", "6"], "--profile_knots", "5 decoder layers"),
    (["--pruner", "median"], "--pruner", "without --prune"),
    (["--prune", "--pruner", "asha"], "--pruner", "asha"),
    (["--optuna_sampler", "bayes"], "--optuna_sampler", "bayes"),
    (["--prune", "--jglue_chunks", "0"], "--jglue_chunks", "at least 1"),
])
def test_bad_search_settings_are_one_line_exit_2_before_loading(trio, tmp_path, capsys, no_loads, extra, flag,
                                                                fragment):
    expect_usage_error(jglue_in_process, argv(trio, tmp_path, 3, *extra), capsys, flag, fragment)


# ------------------------------------------------------------------------------------------------ the default mode

@pytest.mark.parametrize("extra, mode, knots", [
    ([], "profile", 4),  # the default: one vector, task_arithmetic -> profile with 4 knots
    (["--profile_knots", "2"], "profile", 2),
    (["--merge_method", "ties"], "profile", 4),  # a sparsifying merge too
    (["--optimize_mode", "layer"], "layer", 0),  # the original's value still works
])
def test_auto_mode_is_profile_for_every_merge_and_a_named_mode_is_kept(trio, tmp_path, capsys, no_loads, extra, mode,
                                                                  knots):
    from task_vector_opt.cli.flags import run_cli

    run_cli(jglue_in_process, argv(trio, tmp_path, 3, "--dry_run", *extra))
    plan = json.loads(capsys.readouterr().out)
    assert plan["optimize_mode"] == mode
    scales = 1 if not extra or extra[0] != "--optimize_mode" else 0  # auto: the scale stage's scale, too
    assert plan["weights"] == (knots + 3 if mode == "profile" else LAYERS + 3) + scales  # + embed, norm, lm_head


def test_auto_mode_gives_a_model_with_fewer_layers_than_the_default_knots_one_knot_per_layer(tmp_path, capsys,
                                                                                           no_loads):
    from task_vector_opt.cli.flags import run_cli

    small = make_trio(tmp_path / "small", "llama", layers=2)
    run_cli(jglue_in_process, argv(small, tmp_path, 3, "--dry_run"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["optimize_mode"] == "profile" and plan["weights"] == 2 + 3 + 1  # + the scale


def test_auto_mode_with_several_tuned_models_searches_a_scale_and_a_profile_per_vector(trio, tmp_path, capsys,
                                                                                    no_loads):
    from task_vector_opt.cli.flags import run_cli

    run_cli(jglue_in_process, argv(trio, tmp_path, 3, "--dry_run", "--tuned_model",
                                   f"{trio['tuned']},{trio['target']}"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["optimize_mode"] == "profile" and plan["task_vectors"] == 2
    assert plan["weights"] == 2 * (1 + 4 + 3)  # per vector: its scale, 4 knots, embed_tokens, norm, lm_head
