"""The shape stage of --scale_search (issue 27): offsets that reach every weight from any scale, the block design,
and the rule that declares the best trial. The study machinery is the tool's own (open_study, make_objective,
run_search, the scale stage's callbacks); a synthetic score stands in for a model where the test is about the
sampler's reach, and the tiny model scores the merges where the test is about the design's values."""
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from task_vector_opt.search.blocks import block_design, combination, depth_blocks
from task_vector_opt.search.scale_first import (ScaledSpace, ScaleStage, scale_first_sampler, shape_distributions,
                                                shape_sampler)
from task_vector_opt.search.selection import ITEM_VALUES_ATTR, chosen_trial
from task_vector_opt.search.space import search_space
from task_vector_opt.search.study import FINISHED, make_objective, open_study, run_search
from cli_checks import jglue_in_process
from tiny_models import make_trio

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
LAYERS = 8
GROUPS = ["embed_tokens", *[f"layer_{i:02d}" for i in range(LAYERS)], "norm", "lm_head"]


def synthetic_study(mode: str, sampler: str, best_scale: float, n_trials: int, weight_max: float = 2.0):
    """A scale-first study over GROUPS whose uniform merges score best at ``best_scale`` and whose shaped merges
    score their mean weight (so a sampler that can climb, climbs to --weight_max)."""
    space = ScaledSpace(search_space(GROUPS, mode, 4), 0.0, weight_max)
    stage = ScaleStage(space, baselines=True, n_trials=n_trials)
    study = open_study(optuna.storages.InMemoryStorage(), "synthetic",
                       lambda seed: scale_first_sampler(lambda start: shape_sampler(sampler, seed, space, start),
                                                        stage, shape_distributions(space)),
                       0, on_create=stage.start)

    def score(weights, trial):
        values = list(weights.values())
        if len(set(values)) == 1:  # a uniform merge: the scale stage's
            return -abs(values[0] - best_scale), {}
        return float(np.mean(values)) - 10.0, {}  # a shaped one, below every uniform merge: no trial replaces them

    run_search(study, n_trials, make_objective(space.params, 0.0, weight_max, score, space.weights, None,
                                               space.ranges(0.0, weight_max)), [stage.after_trial])
    return study, space


@pytest.mark.parametrize("best_scale", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["layer", "profile"])
def test_from_a_scale_of_0_or_0_1_the_shape_stage_reaches_weight_max_in_every_group(best_scale, mode):
    study, space = synthetic_study(mode, "CMA-ES", best_scale, 150)
    trials = study.get_trials(states=FINISHED)
    scale_trials = [t for t in trials if t.user_attrs.get("stage") == "scale"]
    assert max(scale_trials, key=lambda t: t.value).params["scale"] == best_scale
    shaped = [space.weights(t.params) for t in trials if t.user_attrs.get("stage") != "scale"]
    assert all(space.weights(t.params)["layer_00"] == t.params["scale"] for t in scale_trials)
    for trial in trials:
        if trial.user_attrs.get("stage") != "scale":
            assert trial.params["scale"] == best_scale  # the scale stays the best one
    top = {group: max(w[group] for w in shaped) for group in GROUPS if group.startswith("layer_")}
    # with factors of the scale (before issue 27), scale 0 kept every layer at 0 and 0.1 at most 0.2
    # CMA-ES climbs towards 2.0 in every group (at its own pace in each): most groups get there
    assert min(top.values()) >= 1.2 and sorted(top.values())[len(top) // 2] >= 1.8, top


def test_the_random_sampler_spreads_the_shape_over_the_whole_range_from_scale_0():
    study, space = synthetic_study("layer", "random", 0.0, 60)
    shaped = [space.weights(t.params) for t in study.get_trials(states=FINISHED)
              if "stage" not in t.user_attrs]
    for group in ("layer_00", "layer_07", "norm"):
        values = [w[group] for w in shaped]
        assert max(values) >= 1.5 and sum(v > 0 for v in values) >= len(values) // 3, (group, values)


# ------------------------------------------------------------------------------------------------ the block design

def test_depth_blocks_split_the_layers_into_four_contiguous_runs_and_profile_knots_are_their_own_blocks():
    layer = depth_blocks(search_space(GROUPS, "layer"))
    runs = [list(run) for run in np.array_split(np.arange(LAYERS), 4)]  # computed independently
    assert layer == [[f"layer_{i:02d}" for i in run] for run in runs]
    five = depth_blocks(search_space([f"layer_{i:02d}" for i in range(5)], "layer"))
    assert [len(b) for b in five] == [len(r) for r in np.array_split(np.arange(5), 4)] == [2, 1, 1, 1]
    profile = depth_blocks(search_space(GROUPS, "profile", 3))
    assert profile == [["knot_0"], ["knot_1"], ["knot_2"]]
    two = depth_blocks(search_space([f"v{v}/{g}" for v in (1, 2) for g in GROUPS], "profile", 2))
    assert two == [["v1/knot_0", "v2/knot_0"], ["v1/knot_1", "v2/knot_1"]]  # every vector moves together
    kinds = ["embed_tokens", "self_attn.q_proj", "mlp.down_proj", "input_layernorm", "norm", "lm_head"]
    assert depth_blocks(search_space(kinds, "parameter")) == []  # per tensor kind: no depth, no blocks


def test_the_block_design_raises_to_1_or_weight_max_and_drops_to_0_each_block_alone():
    blocks = [["knot_0"], ["knot_1"]]
    below = block_design(blocks, {"": 0.25}, 0.0, 2.0)
    assert [(p.label, p.offsets) for p in below] == [
        ("raise block 1", {"knot_0": 0.75}), ("drop block 1", {"knot_0": -0.25}),
        ("raise block 2", {"knot_1": 0.75}), ("drop block 2", {"knot_1": -0.25})]
    at_zero = block_design(blocks, {"": 0.0}, 0.0, 2.0)  # dropping is the scale itself: left out
    assert [p.label for p in at_zero] == ["raise block 1", "raise block 2"]
    assert at_zero[0].offsets == {"knot_0": 1.0}
    above = block_design(blocks, {"": 1.0}, 0.0, 2.0)  # at 1 already: raised to the top of the range
    assert above[0].offsets == {"knot_0": 1.0} and above[1].offsets == {"knot_0": -1.0}
    narrow = block_design(blocks, {"": 0.5}, 0.2, 0.8)  # both levels clipped to the range
    assert narrow[0].offsets == {"knot_0": 0.3} and narrow[1].offsets == {"knot_0": -0.3}


def test_the_combination_takes_each_blocks_best_level_and_needs_two_blocks_that_moved():
    points = block_design([["a"], ["b"], ["c"]], {"": 0.5}, 0.0, 2.0)
    scores = {"raise block 1": 0.7, "drop block 1": 0.4, "raise block 2": 0.3, "drop block 2": 0.65,
              "raise block 3": 0.45, "drop block 3": 0.5}
    combined = combination(points, scores, kept_score=0.6)
    assert combined.offsets == {"a": 0.5, "b": -0.5}  # block 3 kept: neither level beat the scale's 0.6
    assert combination(points, {**scores, "drop block 2": 0.6}, kept_score=0.6) is None  # only block 1 moved


def argv(trio, tmp_path, n_trials, *extra):
    return ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--dtype", "float32", "--device", "cpu", "--task_search_path", str(DEMO_TASKS),
            "--jglue_tasks", "demo_target:0.5,demo_skill:0.5", "--jglue_limit", "6", "--jglue_holdout_limit", "6",
            "--batch_size", "16", "--n_trials", str(n_trials), "--output_dir", str(tmp_path / "out"),
            "--run_dir", str(tmp_path / "run"), "--log_level", "WARNING", *extra]


def load_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama", layers=LAYERS)


def test_block_design_on_a_tiny_model_scores_the_points_computed_here_and_resumes_where_it_stopped(trio, tmp_path):
    """Layer mode with the scale stage, on the tiny model: each block trial merges the best scale with one run
    of layers (np.array_split of the depth, here) at 1 or 0; the combination takes each block's best level by
    those trials' scores. Stopped in the middle of the design, the study goes on with the same points."""
    mode = ["--optimize_mode", "layer", "--scale_search", "on"]
    jglue_in_process(argv(trio, tmp_path, 10, *mode))  # the scale stage (6 + 1 or 2), then the first blocks
    study = load_study(tmp_path)
    decided = study.user_attrs["block_design"]
    scale_trials = [t for t in study.get_trials(states=FINISHED) if t.user_attrs.get("stage") == "scale"]
    best = max(scale_trials, key=lambda t: t.value)
    scale = best.params["scale"]
    assert decided["scales"] == [scale]
    runs = [[f"layer_{i:02d}" for i in run] for run in np.array_split(np.arange(LAYERS), 4)]
    raised = 1.0 if scale < 1.0 else 2.0
    expected = {}  # label -> every group's weight
    for index, run in enumerate(runs):
        for word, level in (("raise", raised), ("drop", 0.0)):
            if level != scale:
                expected[f"{word} block {index + 1}"] = {g: (level if g in run else scale) for g in GROUPS}
    assert [label for label, _ in decided["points"]] == list(expected)
    first_blocks = [t for t in study.get_trials(states=FINISHED) if t.user_attrs.get("stage") == "blocks"]
    assert 1 <= len(first_blocks) < len(expected)  # stopped in the middle of the design
    assert not study.get_trials(states=(TrialState.WAITING,))

    total = len(scale_trials) + len(expected) + 2
    jglue_in_process(argv(trio, tmp_path, total, *mode, "--output_dir", str(tmp_path / "out2")))
    study = load_study(tmp_path)
    assert study.user_attrs["block_design"] == decided  # decided once
    trials = study.get_trials(states=FINISHED)
    blocks = [t for t in trials if t.user_attrs.get("stage") == "blocks"]
    labels = [t.user_attrs["design_point"] for t in blocks]
    assert labels[:len(expected)] == list(expected)  # went on with the same points, each once
    for trial in blocks[:len(expected)]:
        assert trial.user_attrs["weights"] == pytest.approx(expected[trial.user_attrs["design_point"]])
        assert trial.params["scale"] == scale
    # the combination, computed here: each block at its best level among kept (the best scale), raised, dropped
    values = {t.user_attrs["design_point"]: t.value for t in blocks[:len(expected)]}
    levels = {}
    for index, run in enumerate(runs):
        options = [(best.value, scale)] + [(values[f"{w} block {index + 1}"], lv)
                                          for w, lv in (("raise", raised), ("drop", 0.0))
                                          if f"{w} block {index + 1}" in values]
        top = max(v for v, _ in options)
        levels[index] = next(lv for v, lv in options if v == top)  # ties: kept first, as the stage reads them
    moved = [i for i in levels if levels[i] != scale]
    if len(moved) >= 2:
        assert labels[len(expected)] == "blocks combined"
        weights = {g: scale for g in GROUPS}
        for i in moved:
            weights.update(dict.fromkeys(runs[i], levels[i]))
        assert blocks[len(expected)].user_attrs["weights"] == pytest.approx(weights)
        assert study.user_attrs["block_combination"][0] == "blocks combined"
    else:
        assert study.user_attrs["block_combination"] is None and len(blocks) == len(expected)
    after = [t for t in trials if t.number > blocks[-1].number]
    assert after and all("stage" not in t.user_attrs for t in after)  # then the sampler


# ------------------------------------------------------------------------------------------------ the declared best

def item_trial(number, value, items, stage=None):
    attrs = {ITEM_VALUES_ATTR: items, **({"stage": stage} if stage else {})}
    trial = create_trial(value=value, params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                         user_attrs=attrs)
    trial.number = number
    return trial


def test_a_shape_trial_is_declared_best_only_beyond_the_paired_interval_on_the_search_items():
    n = 100
    base = {f"i{k}": float(k % 2) for k in range(n)}  # half the items right
    scale = item_trial(0, 0.5, base, "scale")
    lucky = dict(base, i0=1.0, i2=1.0)  # two more items right: 0.52, within the noise of 100 items
    strong = {k: 1.0 if int(k[1:]) < 80 else v for k, v in base.items()}  # 30 more right, none lost
    assert chosen_trial([scale, item_trial(1, 0.52, lucky)]).number == 0
    assert chosen_trial([scale, item_trial(1, 0.52, lucky), item_trial(2, 0.8, strong, "blocks")]).number == 2
    # the highest score wins among those that beat the scale: 0.8 over a significant 0.75
    fair = {k: 1.0 if int(k[1:]) < 70 else v for k, v in base.items()}
    assert chosen_trial([scale, item_trial(1, 0.85, fair), item_trial(2, 0.8, strong)]).number == 1
    # without item values (a pruned trial, an item subset) or without a scale stage: the highest score
    assert chosen_trial([scale, item_trial(1, 0.52, {})]).number == 1
    assert chosen_trial([item_trial(0, 0.5, base), item_trial(1, 0.52, lucky)]).number == 1
    with pytest.raises(ValueError):
        chosen_trial([])


def test_the_run_saves_the_declared_best_and_holds_out_both(trio, tmp_path):
    jglue_in_process(argv(trio, tmp_path, 16, "--holdout_top_k", "2"))
    study = load_study(tmp_path)
    trials = study.get_trials(states=FINISHED)
    assert all(ITEM_VALUES_ATTR in t.user_attrs for t in trials if t.state == TrialState.COMPLETE)
    declared = chosen_trial(trials)
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["best"]["trial"] == declared.number
    assert recipe["scale_search"]["rule"] == "weight = clip(scale of its vector + offset, weight_min, weight_max)"
    assert "best" in recipe["holdout_score"] and "w=0" in recipe["holdout_score"]  # the declared best, held out
    assert recipe["weights"] == pytest.approx(ScaledSpace(search_space(GROUPS, "profile", 4), 0.0, 2.0).weights(
        declared.params))


def test_the_shape_sampler_starts_at_the_highest_design_point_even_when_it_is_not_declared_best():
    """The start is no claim: the block point that scored highest is where CMA-ES begins, though a lead within the
    search items' noise does not make it the declared best; when a scale trial scores highest, the start is the
    best scale (every offset 0)."""
    space = ScaledSpace(search_space(GROUPS, "profile", 4), 0.0, 2.0)
    stage = ScaleStage(space, baselines=True, n_trials=20)
    n = 100
    base = {f"i{k}": float(k % 2) for k in range(n)}
    lucky = dict(base, i0=1.0, i2=1.0)  # 0.52 against 0.5: within the noise

    def add(study, value, items, stage_name, params, label=None):
        attrs = {ITEM_VALUES_ATTR: items, "stage": stage_name, **({"design_point": label} if label else {})}
        study.add_trial(create_trial(value=value, params=params, user_attrs=attrs,
                                     distributions={k: FloatDistribution(-2.0, 2.0) for k in params}))

    zero = dict.fromkeys(space.shape.params, 0.0)
    study = optuna.create_study(direction="maximize")
    add(study, 0.5, base, "scale", {"scale": 0.0, **zero})
    add(study, 0.52, lucky, "blocks", {"scale": 0.0, **zero, "knot_1": 1.0}, "raise block 2")
    assert chosen_trial(study.trials).number == 0  # the declared best stays the scale
    assert chosen_trial(study.trials, confidence=0.0).number == 1  # the plain rule: the highest score
    assert stage.shape_start(study) == {**zero, "knot_1": 1.0}

    study = optuna.create_study(direction="maximize")
    add(study, 0.52, lucky, "scale", {"scale": 0.0, **zero})
    add(study, 0.5, base, "blocks", {"scale": 0.0, **zero, "knot_1": 1.0}, "raise block 2")
    assert stage.shape_start(study) == zero
