"""Search objectives for lm-eval tasks: the task's own metric, or a smoother number from the same log-likelihoods.

Accuracy changes only when a document's best choice flips: over a wide region of weights every trial can score
the same (a chat vector far too strong: every trial 0.50), and the sampler learns nothing. ``choice_prob`` is
the probability the task's own decision rule gives the right choice: a softmax over the scores the metric
takes the argmax of (log-likelihoods for ``acc``, per character for ``acc_norm``, per byte for ``acc_bytes``),
read from lm-eval's per-document results. It moves with every weight change, and it ranks a merge that is
almost right above one that is far off. The held-out verdict always uses the task's own metric.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from lm_eval.api.task import Task

TASK_METRIC = "task"
CHOICE_PROB = "choice_prob"
AUTO = "auto"  # choice_prob where a task allows it (multiple choice, an acc-like metric), its own metric elsewhere
OBJECTIVES = (AUTO, CHOICE_PROB, TASK_METRIC)
# The per-choice scores each multiple-choice metric takes the argmax of (lm-eval's process_results).
NORMALIZERS = {"acc": None, "acc_norm": "chars", "acc_bytes": "bytes"}


def check_objective(task: Task, metric: str) -> str | None:
    """Why ``choice_prob`` cannot score this task, or None when it can."""
    output_type = getattr(task.config, "output_type", None)
    if output_type != "multiple_choice":
        return f"its output type is {output_type!r}; choice_prob needs a multiple_choice task"
    if metric not in NORMALIZERS:
        return f"its metric is {metric!r}; choice_prob follows acc, acc_norm or acc_bytes"
    return None


def task_objective(requested: str, task: Task, metric: str) -> str:
    """The objective one task is searched on: ``auto`` takes choice_prob wherever it can score the task."""
    if requested == AUTO:
        return CHOICE_PROB if check_objective(task, metric) is None else TASK_METRIC
    return requested


def gold_indices(task: Task, doc: dict, n_choices: int) -> list[int]:
    """The right choices of ``doc``, as lm-eval's multiple-choice scoring reads them."""
    gold: Any = task.doc_to_text(doc) if getattr(task, "multiple_input", False) else task.doc_to_target(doc)
    if isinstance(gold, str):
        choices = task.doc_to_choice(doc)
        gold = choices.index(gold) if gold in choices else int(gold) if gold.isdigit() else -1
    golds = list(gold) if isinstance(gold, (list, tuple)) else [gold]
    return [int(g) for g in golds if 0 <= int(g) < n_choices]


def choice_probability(task: Task, metric: str, doc: dict, responses: Sequence[Any]) -> float:
    """P(right choice) under the metric's decision rule: softmax of its per-choice scores, summed over the
    right choices. ``responses``: lm-eval's filtered (log-likelihood, is_greedy) per choice."""
    lls = [float(r[0] if isinstance(r, (list, tuple)) else r) for r in responses]
    choices = task.doc_to_choice(doc)
    lls = lls[: len(choices)]  # mutual-information tasks append unconditional scores after the choices
    normalizer = NORMALIZERS[metric]
    if normalizer == "chars":
        lls = [ll / max(len(c), 1) for ll, c in zip(lls, choices)]
    elif normalizer == "bytes":
        lls = [ll / max(len(c.encode("utf-8")), 1) for ll, c in zip(lls, choices)]
    top = max(lls)
    weights = [math.exp(ll - top) for ll in lls]
    golds = gold_indices(task, doc, len(lls))
    if not golds:
        return 0.0
    return sum(weights[g] for g in golds) / sum(weights)
