"""The search testbed's data: the target's own skill (demo_target) is scored on sums it never trained on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from task_vector_opt.demo.build_data import build_target_eval, build_target_train
from task_vector_opt.demo.skill import TARGET_PROMPT

ROOT = Path(__file__).resolve().parent.parent
TASK_DIR = ROOT / "lm-evaluation-harness" / "demo"
TARGET_EVAL = TASK_DIR / "demo_target_test.jsonl"
TARGET_TRAIN = ROOT / "task_vector_opt" / "demo" / "data" / "target_train.jsonl"


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


def test_lm_eval_loads_demo_target_with_the_prompts_and_choices_of_the_file():
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(TASK_DIR)).load(["demo_target"])["tasks"]["demo_target"]
    docs = list(task.eval_docs)
    first = rows(TARGET_EVAL)[0]
    assert len(docs) == 400
    assert task.doc_to_text(docs[0]) == first["prompt"]
    assert task.doc_to_choice(docs[0]) == first["choices"] and task.doc_to_target(docs[0]) == first["label"]


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
