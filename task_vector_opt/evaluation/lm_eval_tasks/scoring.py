"""The scoring rules: which metric scores a task, how task scores combine, and reading them from lm-eval's
results."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from lm_eval.api.task import Task


PREFERRED_METRICS = ("acc", "exact_match")


def primary_metric(task: Task) -> tuple[str, str]:
    """(metric, result key) that scores ``task``.

    The rule: ``acc`` if the task has it, else ``exact_match``, else the first metric of the task's
    ``metric_list`` (user tasks with their own process_results), else the first metric lm-eval aggregates.
    The result key adds the task's first filter, as lm-eval names results: ``"exact_match,whitespaces"``.

    Values are taken as lm-eval reports them, which is 0..1 for acc and exact_match (lm-eval 0.4's
    exact_match is already a fraction; the original's Stability harness reported JSQuAD exact_match on
    0..100 and divided it by 100 - not needed here). A user metric on another scale is used unscaled.
    """
    names: list[str] = []
    for item in task.config.metric_list or []:
        metric = item.get("metric") if isinstance(item, dict) else None
        names.append(metric if isinstance(metric, str) else getattr(metric, "__name__", str(metric)))
    names += [n for n in task.aggregation() if n not in names]
    if not names:
        raise ValueError(f"task {task.config.task} has no metric")
    metric = next((m for m in PREFERRED_METRICS if m in names), names[0])
    filters = [getattr(f, "name", None) for f in getattr(task, "_filters", [])] or ["none"]
    return metric, f"{metric},{filters[0]}"


def higher_is_better(task: Task, metric: str) -> bool:
    value = task.higher_is_better().get(metric, True)
    return value is not False


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total


def result_value(results: dict[str, Any], task_name: str, key: str) -> float:
    """The metric ``key`` of ``task_name`` in an lm-eval results dict, as a float."""
    task_results = results["results"][task_name]
    if key not in task_results:
        metric = key.split(",")[0]
        alternatives = [k for k in task_results if k.split(",")[0] == metric]
        if not alternatives:
            raise KeyError(f"lm-eval reported no {key!r} for {task_name}: {sorted(task_results)}")
        key = alternatives[0]
    return float(task_results[key])
