"""--item_subset: the anchor-point estimator on constructed per-item data with a known answer, and the evaluator's
subsets on a tiny model (the held-out verdict unchanged, resume keeps the subset)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from task_vector_opt.evaluation.item_subset import ItemSubset, anchor_points, choose_subset
from task_vector_opt.evaluation.lm_eval_tasks.scoring import weighted_mean


def kinds_of_items(sizes: list[int], trials: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items of a few kinds: the items of one kind have the same value in every trial. Returns the kind of each item
    (shuffled) and each kind's value per trial (kinds x trials)."""
    rng = np.random.default_rng(seed)
    kinds = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    return kinds, rng.uniform(0, 1, size=(len(sizes), trials))


def test_one_anchor_per_kind_of_item_estimates_every_later_trial_exactly():
    sizes = [7, 3, 10, 4]  # 24 items, 4 kinds: a subset of 4 items (1/6) knows everything
    kinds, per_kind = kinds_of_items(sizes, trials=6 + 20, seed=0)
    values = per_kind[kinds]  # items x trials
    docs = list(range(100, 124))  # document ids need not be positions
    subset = choose_subset({"t": values[:, :6]}, {"t": docs}, fraction=4 / 24, fitted_on=range(6))
    assert subset.size == 4
    assert sorted(kinds[docs.index(d)] for d in subset.anchors["t"]) == [0, 1, 2, 3]  # one of each kind
    assert sorted(subset.weights["t"]) == sorted(float(s) for s in sizes)  # each stands for its kind
    for later in range(6, 26):  # trials the subset never saw
        anchor_values = {d: values[docs.index(d), later] for d in subset.anchors["t"]}
        assert subset.task_estimate("t", anchor_values) == pytest.approx(values[:, later].mean(), abs=1e-12)


def test_weighted_tasks_are_estimated_as_the_full_score_weighs_them():
    """Two tasks of different sizes and weights 0.75 / 0.25: the estimate is the weighted mean of each task's
    estimate, as full scoring weighs each task's mean (not a mean over all items)."""
    kinds_a, per_kind_a = kinds_of_items([5, 15], trials=9, seed=1)
    kinds_b, per_kind_b = kinds_of_items([2, 2, 4], trials=9, seed=2)
    values = {"a": per_kind_a[kinds_a], "b": per_kind_b[kinds_b]}
    docs = {"a": list(range(20)), "b": list(range(8))}
    subset = choose_subset({t: v[:, :6] for t, v in values.items()}, docs, fraction=0.375,
                           fitted_on=range(6))
    assert {t: len(a) for t, a in subset.anchors.items()} == {"a": 8, "b": 3}  # round(0.375 * 20), 0.375 * 8
    task_weights = {"a": 0.75, "b": 0.25}
    for later in range(6, 9):
        full = weighted_mean([values["a"][:, later].mean(), values["b"][:, later].mean()], [0.75, 0.25])
        estimate = subset.estimate({t: {d: values[t][d, later] for d in subset.anchors[t]} for t in values},
                                   task_weights)
        assert estimate == pytest.approx(full, abs=1e-12)
        pooled = np.concatenate([values["a"][:, later], values["b"][:, later]]).mean()
        assert abs(estimate - pooled) > 1e-3  # the known answer is the weighted one, not the items' pooled mean


def test_spare_anchors_go_to_the_largest_clusters_and_weights_always_sum_to_the_items():
    values = np.array([[1.0, 1.0]] * 9 + [[0.0, 0.0]] * 3)  # two kinds only, 12 items, 4 anchors allowed
    anchors = anchor_points(values, 4)
    assert len(anchors) == 4
    assert sum(w for _, w in anchors) == pytest.approx(12)
    assert sorted(w for _, w in anchors) == [3.0, 3.0, 3.0, 3.0]  # 3 anchors of 3 for the 9, 1 for the 3


def test_a_subset_as_large_as_the_task_is_every_item_and_round_trips_through_json():
    values = np.random.default_rng(3).uniform(size=(5, 4))
    assert anchor_points(values, 5) == [(i, 1.0) for i in range(5)]
    subset = choose_subset({"t": values}, {"t": [0, 1, 2, 3, 4]}, 0.5, fitted_on=[0, 1, 2, 3])
    assert ItemSubset.from_json(subset.to_json()) == subset


def test_on_noisy_items_the_anchor_estimate_tracks_the_full_score_better_than_a_random_subset():
    """Items of a few kinds plus noise (as real documents are): anchors chosen on 6 trials estimate 40 later trials
    with a smaller error than random subsets of the same size (the reason to cluster at all)."""
    rng = np.random.default_rng(4)
    kinds, per_kind = kinds_of_items([30, 20, 25, 15, 10], trials=46, seed=4)
    values = per_kind[kinds] + rng.normal(0, 0.05, size=(100, 46))
    subset = choose_subset({"t": values[:, :6]}, {"t": list(range(100))}, 0.1, fitted_on=range(6))
    full = values[:, 6:].mean(axis=0)
    anchor_error = np.abs(np.array([subset.task_estimate("t", {d: values[d, k] for d in subset.anchors["t"]})
                                    for k in range(6, 46)]) - full).mean()
    random_errors = [np.abs(values[rng.choice(100, 10, replace=False), 6:].mean(axis=0) - full).mean()
                     for _ in range(200)]
    assert anchor_error < np.median(random_errors) / 3


# ------------------------------------------------------------------------------ through the JGLUE launcher

@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    from tiny_models import make_trio

    return make_trio(tmp_path_factory.mktemp("trio"), "llama")


def test_later_trials_score_the_subset_resume_keeps_it_and_the_held_out_verdict_uses_every_item(trio, tmp_path):
    """A run with --item_subset scores its first trials in full, then only the subset (each trial records the
    estimate, the subset's size and the items it cost), and confirms on every document only a trial whose estimate
    beats every full score before it, so the best trial's score is never an estimate; rerun with more trials it keeps
    the same subset; its held-out scores and verdict are those of every held-out document, exactly as without
    subsets."""
    from test_jglue_pipeline import command, load_study, run

    from task_vector_opt.evaluation.jglue import SEARCH_VALUES_ATTR, SUBSET_ATTR
    from task_vector_opt.search.study import FINISHED

    with_subset = tmp_path / "subset"
    flags = ("--item_subset", "0.34", "--item_subset_after", "6")
    done = run(command(trio, with_subset, 9, *flags))
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(with_subset)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 9
    subset = study.user_attrs[SUBSET_ATTR]
    assert subset["fitted_on"] == [0, 1, 2, 3, 4, 5] and len(subset["anchors"]["demo_skill"]) == 4  # 0.34 * 12
    for trial in trials[:6]:  # scored in full: every search document's value kept for the fit
        assert trial.user_attrs["items_scored"] == 12 and len(trial.user_attrs[SEARCH_VALUES_ATTR]["demo_skill"]) == 12
        assert "subset_estimate" not in trial.user_attrs

    again = run(command(trio, with_subset, 11, *flags, "--overwrite_output_dir"))  # resumed: the same subset
    assert again.returncode == 0, again.stderr[-3000:]
    study = load_study(with_subset)
    assert study.user_attrs[SUBSET_ATTR] == subset
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 11
    for trial in trials[6:]:
        full_before = max(t.value for t in trials[:trial.number]
                          if "subset_estimate" not in t.user_attrs or t.user_attrs.get("subset_confirmed"))
        assert trial.user_attrs["subset_size"] == 4 and SEARCH_VALUES_ATTR not in trial.user_attrs
        if trial.user_attrs.get("subset_confirmed"):  # a new best by its estimate: scored on every document
            assert trial.user_attrs["subset_estimate"] > full_before and trial.user_attrs["items_scored"] == 12
        else:
            assert trial.user_attrs["subset_estimate"] <= full_before
            assert trial.user_attrs["items_scored"] == 4 and trial.value == trial.user_attrs["subset_estimate"]
    best = study.best_trial
    assert "subset_estimate" not in best.user_attrs or best.user_attrs["subset_confirmed"]
    spent = sum(t.user_attrs["items_scored"] for t in trials)

    without = tmp_path / "full"
    assert run(command(trio, without, 9)).returncode == 0
    recipes = [json.loads((d / "out" / "merge_recipe.json").read_text()) for d in (with_subset, without)]
    assert "scored 0.34 of the search documents" in recipes[0]["search"] and "documents" not in recipes[1]["search"]
    for recipe in recipes:  # the verdict pairs all 12 held-out documents, never an estimate
        assert recipe["holdout_verdict"]["vs w=0"]["n_items"] == 12
    for label in ("w=0", "w=1"):
        assert recipes[0]["holdout_score"][label] == recipes[1]["holdout_score"][label]
    assert recipes[0]["items_scored"] == spent < 11 * 12 and recipes[1]["items_scored"] == 9 * 12


@pytest.mark.parametrize("extra, flag, fragment", [
    (["--item_subset", "1"], "--item_subset", "below 1"),
    (["--item_subset", "-0.2"], "--item_subset", "at least 0"),
    (["--item_subset", "0.3", "--item_subset_after", "1"], "--item_subset_after", "at least 2"),
    (["--item_subset", "0.3", "--prune"], "--item_subset", "--prune"),
])
def test_bad_subset_settings_are_one_line_naming_the_flag_before_any_model_loads(extra, flag, fragment, trio, tmp_path,
                                                                                 capsys, monkeypatch):
    from cli_checks import expect_usage_error, jglue_in_process, refuse_model_loads
    from test_jglue_pipeline import command

    from task_vector_opt import engine

    refuse_model_loads(monkeypatch, engine)
    argv = command(trio, tmp_path, 3, *extra)[2:]  # without the interpreter and the script
    expect_usage_error(jglue_in_process, argv, capsys, flag, fragment)


@pytest.mark.parametrize("bar", [-1.0, 2.0], ids=["estimate_beats_every_full_score", "estimate_beats_none"])
def test_only_an_estimate_above_every_full_score_is_confirmed_and_then_the_score_is_the_full_one(trio, tmp_path, bar):
    """Six trials scored in full (their values told as ``bar``), then one on the subset: above the bar it is scored
    on the other documents too and gets exactly the full score; below it keeps the estimate."""
    import optuna
    from test_jglue_evaluator import flags
    from test_jglue_pipeline import DEMO_TASKS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from task_vector_opt.evaluation.jglue import JGLUEEvaluator, jglue_settings_from_args

    settings = jglue_settings_from_args(flags(jglue_tasks="demo_skill", jglue_limit="12", batch_size="4",
                                              task_search_path=str(DEMO_TASKS), search_objective="auto",
                                              item_subset="0.25"))
    evaluator = JGLUEEvaluator(settings, tmp_path / "tasks")
    live = (AutoModelForCausalLM.from_pretrained(trio["target"], dtype=torch.float32),
            AutoTokenizer.from_pretrained(trio["target"]))
    study = optuna.create_study(direction="maximize")
    full = None
    for _ in range(6):
        trial = study.ask()
        full = evaluator.score(*live, trial=trial)
        for key, value in full.trial_attrs.items():  # as the engine stores them
            trial.set_user_attr(key, value)
        study.tell(trial, bar)
    trial = study.ask()
    later = evaluator.score(*live, trial=trial)
    assert later.trial_attrs["subset_size"] == 3  # a quarter of 12
    if bar < 0:
        assert later.trial_attrs["subset_confirmed"] and later.items_scored == 12
        assert later.value == pytest.approx(full.value, abs=1e-12)
    else:
        assert "subset_confirmed" not in later.trial_attrs and later.items_scored == 3
        assert later.value == later.trial_attrs["subset_estimate"]
