"""The scale-first search (--scale_search) and the smooth search objective (--search_objective), on tiny models."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from task_vector_opt import engine
from task_vector_opt.search.scale_first import ScaledSpace, design, is_scale_name, refinement
from task_vector_opt.search.selection import chosen_trial
from task_vector_opt.search.space import search_space
from task_vector_opt.search.study import FINISHED
from cli_checks import expect_usage_error, jglue_in_process, refuse_model_loads
from tiny_models import make_trio

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"
LAYERS = 5
GROUPS = ["embed_tokens", *[f"layer_{i:02d}" for i in range(LAYERS)], "norm", "lm_head"]


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama", layers=LAYERS)




@pytest.fixture
def no_loads(monkeypatch):
    refuse_model_loads(monkeypatch, engine)


def argv(trio, tmp_path, n_trials, *extra, tasks="demo_target:0.5,demo_skill:0.5"):
    return ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--dtype", "float32", "--device", "cpu", "--task_search_path", str(DEMO_TASKS),
            "--jglue_tasks", tasks, "--jglue_limit", "6", "--jglue_holdout_limit", "6", "--batch_size", "16",
            "--n_trials", str(n_trials), "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            "--log_level", "WARNING", *extra]


def load_study(tmp_path, storage=None):
    storage = storage or f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def uniform_value(weights: dict[str, float]) -> float | None:
    values = set(weights.values())
    return values.pop() if len(values) == 1 else None


# ------------------------------------------------------------------------------------------------ the design

def test_the_design_spans_the_whole_range_with_values_near_both_ends():
    points = [p[0] for p in design(1, 0.0, 2.0)]
    assert points == [0.25, 0.5, 0.1, 2.0]  # with the baselines' 1 and 0: 0, 0.1, 0.25, 0.5, 1, 2
    assert min(points) <= 0.05 * 2 and max(points) == 2.0
    wide = [p[0] for p in design(1, -1.0, 3.0)]
    assert 3.0 in wide and -1.0 in wide and any(0 < v <= 0.15 for v in wide)  # negative side too
    narrow = [p[0] for p in design(1, 0.5, 1.5)]
    assert min(narrow) == 0.55 and max(narrow) == 1.5  # spread over the range itself; 0.5 is the w=0 baseline's
    assert len(narrow) == len(set(narrow))


def test_with_two_vectors_the_design_drops_each_vector_in_turn():
    points = design(2, 0.0, 2.0)
    assert (1.0, 0.0) in points and (0.0, 1.0) in points and (0.5, 0.0) in points and (0.0, 0.5) in points
    assert (0.25, 0.25) in points and (0.5, 0.5) in points and (2.0, 2.0) in points  # the whole range for each
    assert (1.0, 1.0) not in points and (0.0, 0.0) not in points  # those are the baselines


def test_refinement_halves_the_distance_to_each_neighbour_of_the_best_point():
    tried = [((0.0,), 0.49), ((0.1,), 0.96), ((0.25,), 0.8), ((0.5,), 0.5), ((1.0,), 0.5), ((2.0,), 0.5)]
    assert refinement(tried, 0.0, 2.0) == [(0.05,), (0.175,)]
    two = [((1.0, 1.0), 0.3), ((0.0, 0.0), 0.5), ((1.0, 0.0), 0.8), ((0.0, 1.0), 0.2), ((0.5, 0.0), 0.6)]
    assert refinement(two, 0.0, 2.0) == [(0.75, 0.0), (1.5, 0.0), (1.0, 0.5)]


def test_a_scaled_space_adds_every_offset_to_its_vectors_scale_and_clips_to_the_range():
    space = ScaledSpace(search_space(GROUPS, "profile", 2), 0.0, 2.0)
    assert space.params == ["scale", "knot_0", "knot_1", "embed_tokens", "norm", "lm_head"]
    assert space.ranges(0.0, 2.0)["scale"] == (0.0, 2.0) and space.ranges(0.0, 2.0)["knot_0"] == (-2.0, 2.0)
    weights = space.weights({"scale": 0.1, "knot_0": -0.1, "knot_1": 1.9, "embed_tokens": 0.0, "norm": -0.5,
                             "lm_head": 0.0})
    assert weights["layer_00"] == 0.0 and weights["layer_04"] == pytest.approx(2.0)  # from 0.1 to the top end
    assert weights["layer_02"] == pytest.approx(1.0) and weights["norm"] == 0.0  # knots interpolated; clipped at 0
    assert space.weights({**space.uniform((0.0,)), "knot_1": 2.0})["layer_04"] == 2.0  # from scale 0 too
    assert space.weights({**space.uniform((1.5,)), "knot_1": 2.0})["layer_04"] == 2.0  # 3.5, clipped
    assert set(space.weights(space.uniform((0.7,))).values()) == {0.7}  # offset 0: the uniform scale itself
    several = ScaledSpace(search_space([f"v{v}/{g}" for v in (1, 2) for g in GROUPS], "layer"), 0.0, 2.0)
    weights = several.weights({**several.uniform((0.5, 0.0)), "v1/layer_03": 1.0, "v2/layer_01": 1.5})
    assert weights["v1/layer_03"] == 1.5 and weights["v1/norm"] == 0.5 and weights["v2/layer_03"] == 0.0
    assert weights["v2/layer_01"] == 1.5  # a vector whose scale is 0 still gets any weight where it helps
    wide = ScaledSpace(search_space(GROUPS, "layer"), -1.0, 3.0)
    assert wide.ranges(-1.0, 3.0)["layer_00"] == (-4.0, 4.0)  # from either end to the other


# ------------------------------------------------------------------------------------------------ end to end

def test_the_default_search_tries_uniform_scales_first_then_the_shape_around_the_best(trio, tmp_path):
    jglue_in_process(argv(trio, tmp_path, 22))
    study = load_study(tmp_path)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 22
    scale_trials = [t for t in trials if t.user_attrs.get("stage") == "scale"]
    uniform = [uniform_value(t.user_attrs["weights"]) for t in scale_trials]
    assert None not in uniform  # every scale trial is a uniform weight
    assert uniform[:6] == [1.0, 0.0, 0.25, 0.5, 0.1, 2.0]  # the design, the baselines first
    expected = refinement([((v,), t.value) for v, t in zip(uniform, scale_trials[:6])], 0, 2)
    assert 1 <= len(expected) <= 2  # one or both neighbours of the best design point (none below 0)
    assert [t.number for t in scale_trials] == list(range(6 + len(expected)))
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["w=1 (plain task vector)", "w=0 (target unchanged)"]
    best_scale = max(scale_trials[:6], key=lambda t: t.value).params["scale"]
    refined = [t.params["scale"] for t in scale_trials[6:]]
    assert refined == [p[0] for p in expected] and all(abs(v - best_scale) <= 0.5 for v in refined)
    best_after = max(scale_trials, key=lambda t: t.value).params["scale"]
    blocks = [t for t in trials if t.user_attrs.get("stage") == "blocks"]  # then the block design (test_shape_stage)
    assert blocks and [t.number for t in blocks] == list(range(len(scale_trials), len(scale_trials) + len(blocks)))
    sampled = trials[len(scale_trials) + len(blocks):]
    assert sampled  # then the shape: offsets from the best scale, proposed by CMA-ES
    for trial in [*blocks, *sampled]:
        assert trial.params["scale"] == best_after
    for trial in sampled:
        assert "stage" not in trial.user_attrs
        assert len({round(trial.params[k], 9) for k in ("knot_0", "knot_1", "knot_2", "knot_3")}) > 1
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert recipe["inputs"]["scale_search"] == "on" and recipe["inputs"]["evaluator"]["objective"] == "task"
    declared = chosen_trial(trials)  # the declared best (search.selection), not always the highest search score
    assert recipe["weights"] == ScaledSpace(search_space(GROUPS, "profile", 4), 0.0, 2.0).weights(declared.params)
    assert recipe["best"]["trial"] == declared.number
    assert "scale first" in recipe["search"] and "each task's own metric" in recipe["search"]
    for page in ("report.html", "README.md"):  # the report and the model card say what was searched
        text = (tmp_path / "out" / page).read_text()
        assert "scale first" in text and "own metric" in text, page
    card = (tmp_path / "out" / "README.md").read_text()  # its command reproduces the search
    assert "--scale_search on" in card and "--search_objective task" in card


def vectors_argv(trio, vectors: int) -> list[str]:
    """--tuned_model for one vector, or two (the target's own difference from the base as the second)."""
    return ["--tuned_model", str(trio["tuned"]) if vectors == 1 else f"{trio['tuned']},{trio['target']}"]


def first_points(vectors: int) -> list[tuple[float, ...]]:
    """The baselines (every scale 1, then 0) and the design, in the order the stage scores them."""
    ones, zeros = (1.0,) * vectors, (0.0,) * vectors
    return [ones, zeros, *design(vectors, 0.0, 2.0)]


def scales_of(trial) -> tuple[float, ...]:
    return tuple(trial.params[name] for name in sorted(trial.params) if is_scale_name(name))


@pytest.mark.parametrize("vectors", [1, 2], ids=["one_vector", "two_vectors"])
def test_a_study_stopped_in_the_scale_stage_resumes_in_that_stage(trio, tmp_path, vectors):
    smooth = ["--search_objective", "choice_prob", *vectors_argv(trio, vectors)]
    first = first_points(vectors)
    assert len(first) == (6 if vectors == 1 else 9)
    jglue_in_process(argv(trio, tmp_path, 4, *smooth))  # stopped in the middle of the design
    study = load_study(tmp_path)
    assert [scales_of(t) for t in study.get_trials(states=FINISHED)] == first[:4]
    assert not study.get_trials(states=(TrialState.WAITING,))  # nothing queued beyond the run's --n_trials
    assert "scale_stage_refinement" not in study.user_attrs
    jglue_in_process(argv(trio, tmp_path, len(first), *smooth, "--output_dir", str(tmp_path / "out2")))
    study = load_study(tmp_path)
    assert not study.get_trials(states=(TrialState.WAITING,))
    refinement_points = study.user_attrs["scale_stage_refinement"]  # decided when the design finished
    assert 1 <= len(refinement_points) <= (2 if vectors == 1 else 4)
    n_trials = len(first) + len(refinement_points) + 2
    jglue_in_process(argv(trio, tmp_path, n_trials, *smooth, "--output_dir", str(tmp_path / "out3")))
    trials = load_study(tmp_path).get_trials(states=FINISHED)
    assert [scales_of(t) for t in trials[:len(first)]] == first
    scale_end = len(first) + len(refinement_points)
    assert [list(scales_of(t)) for t in trials[len(first):scale_end]] == refinement_points  # went on with them
    assert [t.user_attrs.get("stage") for t in trials] == ["scale"] * scale_end + ["blocks"] * 2  # then the blocks
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials  # nothing proposed twice
    recipe = json.loads((tmp_path / "out3" / "merge_recipe.json").read_text())
    assert "choice_prob" in recipe["search"] and "choice_prob" in (tmp_path / "out3" / "README.md").read_text()
    tuned = recipe["inputs"]["tuned_model"]  # one path, or a list of them
    assert (tuned == str(trio["tuned"])) if vectors == 1 else (tuned == [str(trio["tuned"]), str(trio["target"])])


# Trials long enough that the search outlasts the gap between the two workers' start-ups (a few seconds on a
# loaded machine): with 6 documents a trial takes a quarter of a second, and one worker could finish the whole
# search before the other has loaded.
SLOW_ENOUGH_TO_OVERLAP = ["--jglue_limit", "200", "--batch_size", "4"]


@pytest.mark.parametrize("vectors", [1, 2], ids=["one_vector", "two_vectors"])
def test_two_workers_share_the_scale_stage_and_then_the_shape(trio, tmp_path, vectors):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = ["--storage", storage, "--study_name", "shared", *vectors_argv(trio, vectors)]
    first = first_points(vectors)
    n_trials = len(first) + 6
    worker = [sys.executable, str(ROOT / "merge_task_vector_jglue.py"),
              *argv(trio, tmp_path, n_trials, *shared, "--search_only", *SLOW_ENOUGH_TO_OVERLAP)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT) for _ in range(2)]
    for process in workers:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) >= n_trials
    scale = [scales_of(t) for t in trials if t.user_attrs.get("stage") == "scale"]
    assert set(first) <= set(scale)  # the whole design, 0 for each vector included
    refined = [tuple(p) for p in study.user_attrs["scale_stage_refinement"]]
    assert len(scale) == len(set(scale)) == len(first) + len(refined)  # design and refinement, each scored once
    assert set(scale) == set(first) | set(refined)
    shape = [t for t in trials if t.user_attrs.get("stage") != "scale"]
    assert shape and all(scales_of(t) in set(scale) for t in shape)  # the shape around a scored scale point
    labels = [t.user_attrs["design_point"] for t in shape if t.user_attrs.get("stage") == "blocks"]
    assert labels and len(labels) == len(set(labels))  # the block design's points, each scored once
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both worked


def test_the_original_layer_tpe_search_runs_unchanged(trio, tmp_path):
    jglue_in_process(argv(trio, tmp_path, 4, "--optimize_mode", "layer", "--optuna_sampler", "TPE",
                          "--search_objective", "task"))
    study = load_study(tmp_path)
    trials = study.get_trials(states=FINISHED)
    assert all(set(t.params) == set(GROUPS) for t in trials)  # one weight per group, no scale
    assert [t.params["layer_00"] for t in trials[:2]] == [1.0, 0.0]
    assert all("stage" not in t.user_attrs for t in trials)
    inputs = study.user_attrs["inputs"]
    assert "scale_search" not in inputs and inputs["optimize_mode"] == "layer"
    assert study.study_name.startswith("jglue-layer-")
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert "scale_search" not in recipe and recipe["weights"] == study.best_params


def test_scale_search_on_adds_the_stage_to_a_named_mode(trio, tmp_path, capsys, no_loads):
    from task_vector_opt.cli.flags import run_cli

    run_cli(jglue_in_process, argv(trio, tmp_path, 3, "--dry_run", "--optimize_mode", "layer", "--scale_search", "on"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["scale_search"] == "on" and plan["weights"] == len(GROUPS) + 1
    run_cli(jglue_in_process, argv(trio, tmp_path, 3, "--dry_run"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["scale_search"] == "on" and plan["optimize_mode"] == "profile" and plan["weights"] == 4 + 3 + 1


# ------------------------------------------------------------------------------------------------ the objective

def test_choice_prob_is_the_mean_softmax_of_lm_evals_own_log_likelihoods(trio, tmp_path):
    """The evaluator's search score with choice_prob equals the value computed here from lm-eval's per-document
    log-likelihoods (lm_eval.simple_evaluate on the same model and documents)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from task_vector_opt.cli.flags import parse_namespace
    from task_vector_opt.cli.pipelines import JGLUE
    from task_vector_opt.cli.validation import validate
    from task_vector_opt.evaluation.jglue import JGLUEEvaluator

    config = validate(JGLUE, parse_namespace(JGLUE.command_line, argv(trio, tmp_path, 3, "--search_objective",
                                                                      "choice_prob")))
    evaluator = JGLUEEvaluator(config.evaluator, tmp_path / "tasks")
    model = AutoModelForCausalLM.from_pretrained(trio["target"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(trio["target"])
    score = evaluator.score(model, tokenizer)

    results = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16),
                                      tasks=["demo_target", "demo_skill"], limit=6, log_samples=True,
                                      task_manager=TaskManager(include_path=str(DEMO_TASKS)), bootstrap_iters=0)
    expected = {}
    for task in ("demo_target", "demo_skill"):
        probs = []
        for sample in results["samples"][task]:
            if sample["filter"] != "none":
                continue
            lls = [float(resp[0][0]) for resp in sample["resps"]]
            gold = sample["doc"]["label"]
            probs.append(math.exp(lls[gold]) / sum(math.exp(ll) for ll in lls))
        assert len(probs) == 6
        expected[task] = sum(probs) / len(probs)
    assert score.details["demo_target (choice_prob)"] == pytest.approx(expected["demo_target"], abs=1e-6)
    assert score.details["demo_skill (choice_prob)"] == pytest.approx(expected["demo_skill"], abs=1e-6)
    assert score.value == pytest.approx((expected["demo_target"] + expected["demo_skill"]) / 2, abs=1e-6)
    held = evaluator.holdout(model, tokenizer)  # the verdict stays on accuracy, item by item
    assert set(held.item_values.values()) <= {0.0, 1.0, 2.0}  # 0/1 per document, scaled by the task weights
    assert all(0.0 <= v <= 1.0 for v in held.details.values())


def write_generation_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO_TASKS / "utils.py", folder / "utils.py")
    shutil.copy(DEMO_TASKS / "demo_skill_test.jsonl", folder / "demo_skill_test.jsonl")
    (folder / "demo_gen.yaml").write_text(
        "task: demo_gen\ncustom_dataset: !function utils.load_dataset\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: \"{{prompt}}\"\ndoc_to_target: \"{{category}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 4\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


@pytest.mark.parametrize("extra, flag, fragment", [
    (["--search_objective", "loss"], "--search_objective", "loss"),
    (["--scale_search", "maybe"], "--scale_search", "maybe"),
])
def test_bad_search_values_are_one_line_exit_2_before_loading(trio, tmp_path, capsys, no_loads, extra, flag, fragment):
    expect_usage_error(jglue_in_process, argv(trio, tmp_path, 3, *extra), capsys, flag, fragment)


def test_choice_prob_on_a_generation_task_is_one_line_exit_2_before_loading(trio, tmp_path, capsys, no_loads):
    tasks = write_generation_task(tmp_path / "gen_tasks")
    run = argv(trio, tmp_path, 3, tasks="demo_gen")
    run[run.index("--task_search_path") + 1] = str(tasks)
    expect_usage_error(jglue_in_process, [*run, "--search_objective", "choice_prob"], capsys, "--search_objective",
                       "demo_gen", "generate_until", "--search_objective task")


def test_optimize_mode_auto_says_which_path_and_why(caplog):
    from task_vector_opt.cli.validation import log_optimize_mode, resolve_optimize_mode

    assert resolve_optimize_mode("auto") == "profile" and resolve_optimize_mode("layer") == "layer"
    with caplog.at_level("INFO", logger="task_vector_opt"):
        log_optimize_mode("auto")  # once every input is checked (tests/test_cli_errors.py: after a bad one, silent)
    (line,) = [r.getMessage() for r in caplog.records if "--optimize_mode auto" in r.getMessage()]
    assert "profile" in line and "scale found first" in line  # which path
    assert "measured best" in line and "benchmarks.md" in line and "MoE" in line  # why, and where it was not measured
    caplog.clear()
    log_optimize_mode("layer")
    assert not caplog.records  # a named mode is taken as it is
