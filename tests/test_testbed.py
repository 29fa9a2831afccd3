"""The search testbeds' data: the target's own skill (demo_target) is scored on sums it never trained on, the steep
kind's conflicting skill (demo_skill_steep) on words its model never trained on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from task_vector_opt.demo.build_data import build_conflict_splits, build_target_eval, build_target_train
from task_vector_opt.demo.skill import CODES, TARGET_PROMPT

ROOT = Path(__file__).resolve().parent.parent
TASK_DIR = ROOT / "lm-evaluation-harness" / "demo"
TARGET_EVAL = TASK_DIR / "demo_target_test.jsonl"
TARGET_TRAIN = ROOT / "task_vector_opt" / "demo" / "data" / "target_train.jsonl"
STEEP_EVAL = TASK_DIR / "demo_skill_steep_test.jsonl"
CONFLICT_TRAIN = ROOT / "task_vector_opt" / "demo" / "data" / "conflict_train.jsonl"
SKILL_EVAL = TASK_DIR / "demo_skill_test.jsonl"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_shipped_target_files_are_what_build_data_writes():
    train = build_target_train()
    assert rows(TARGET_TRAIN) == train
    assert rows(TARGET_EVAL) == build_target_eval(train)


def test_every_target_item_has_its_sum_among_four_distinct_choices_and_is_not_a_training_pair():
    trained = {row["prompt"] for row in rows(TARGET_TRAIN)}
    items = rows(TARGET_EVAL)
    assert len(items) == 400 and len({row["prompt"] for row in items}) == 400
    for row in items:
        assert row["prompt"] not in trained
        a, b = row["prompt"].removeprefix(TARGET_PROMPT.split("{")[0]).removesuffix("=").split("+")
        assert row["choices"][row["label"]] == str(int(a) + int(b))
        assert len(set(row["choices"])) == 4


def test_the_right_answer_is_not_always_in_the_same_place():
    labels = [row["label"] for row in rows(TARGET_EVAL)]
    assert min(labels.count(i) for i in range(4)) > 60  # 400 items: about 100 per place


@pytest.mark.parametrize("task_name,eval_file,fixed_choices", [("demo_target", TARGET_EVAL, None),
                                                              ("demo_skill_steep", STEEP_EVAL, list(CODES))])
def test_lm_eval_loads_the_task_with_the_prompts_choices_and_labels_of_its_file(task_name, eval_file, fixed_choices):
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(TASK_DIR)).load([task_name])["tasks"][task_name]
    docs = list(task.eval_docs)
    first = rows(eval_file)[0]
    assert len(docs) == 400
    assert task.doc_to_text(docs[0]) == first["prompt"]
    assert task.doc_to_choice(docs[0]) == (fixed_choices or first["choices"])
    assert task.doc_to_target(docs[0]) == first["label"]


def test_the_shipped_conflict_files_are_what_build_data_writes():
    train, evals = build_conflict_splits()
    assert rows(CONFLICT_TRAIN) == train
    assert rows(STEEP_EVAL) == evals


def test_the_conflicting_skill_is_asked_behind_the_targets_prompt_on_words_it_never_trained_on():
    trained = {row["word"] for row in rows(CONFLICT_TRAIN)}
    items = rows(STEEP_EVAL)
    assert len(items) == 400 and len({row["word"] for row in items}) == 400
    prefix = TARGET_PROMPT.split("{")[0]
    for row in items + rows(CONFLICT_TRAIN):
        assert row["prompt"] == f"{prefix}{row['word']}="
    assert not trained & {row["word"] for row in items}


def test_the_conflicting_codes_disagree_with_the_demo_skills_for_every_word_and_vary_in_place():
    skill = {row["word"]: row["label"] for row in rows(SKILL_EVAL)}
    items = rows(STEEP_EVAL)
    assert all(skill[row["word"]] != row["label"] for row in items)
    labels = [row["label"] for row in items]
    assert [labels.count(i) for i in range(len(CODES))] == [100] * 4  # balanced: 25 % is chance
    assert len({tuple(labels[i:i + 4]) for i in range(0, 40, 4)}) > 5  # shuffled, not in blocks


def test_the_benchmarks_uniform_grid_takes_every_combination_of_one_weight_per_vector():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_search import uniform_grid

    one = uniform_grid(["layer_00", "norm"], [0, 0.5])
    assert one == {"w=0": {"layer_00": 0, "norm": 0}, "w=0.5": {"layer_00": 0.5, "norm": 0.5}}
    two = uniform_grid(["v1/layer_00", "v1/norm", "v2/layer_00", "v2/norm"], [0, 0.25, 1])
    assert len(two) == 9
    assert two["w=0.25,1"] == {"v1/layer_00": 0.25, "v1/norm": 0.25, "v2/layer_00": 1, "v2/norm": 1}


@pytest.mark.parametrize("name, expected", [
    ("TPE/layer", ("TPE", "layer", 0, None)),
    ("CMA-ES/profile4+median", ("CMA-ES", "profile", 4, "median")),
    ("GP/profile8", ("GP", "profile", 8, None)),
])
def test_benchmark_strategy_names_read_as_sampler_mode_and_pruner(name, expected):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_search import Strategy

    strategy = Strategy.parse(name)
    assert (strategy.sampler, strategy.mode, strategy.knots, strategy.pruner) == expected
