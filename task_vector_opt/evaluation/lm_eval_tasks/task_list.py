"""``--jglue_tasks`` and the per-task count flags: names with their weights, one count per task."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from task_vector_opt.errors import UsageError

TASKS_FLAG = "--jglue_tasks"


@dataclass(frozen=True)
class TaskRequest:
    name: str  # as the user wrote it; also the display name in details and logs
    weight: float = 1.0


def parse_task_list(value: str | None) -> list[TaskRequest]:
    """``--jglue_tasks``: ``name[:weight],...``; weights are positive numbers (default 1.0)."""
    if value is None or not value.strip():
        raise UsageError(TASKS_FLAG, "no task given; list lm-eval tasks, e.g. jcommonsenseqa-1.1-0.3,jnli-1.3-0.2")
    requests: list[TaskRequest] = []
    seen: set[str] = set()
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            raise UsageError(TASKS_FLAG, f"empty entry in {value!r}; separate task names with single commas")
        name, weight = item, 1.0
        colon = item.rfind(":")
        if colon > 0 and item[colon - 1] != ":":  # "group::task" names of lm-eval carry no weight
            name, text = item[:colon].strip(), item[colon + 1:].strip()
            try:
                weight = float(text)
            except ValueError:
                weight = math.nan
            if not (math.isfinite(weight) and weight > 0):
                raise UsageError(TASKS_FLAG, f"bad weight {text!r} in {item!r}; write name:weight with a positive "
                                             "number, e.g. jnli-1.3-0.2:0.5")
        if not name:
            raise UsageError(TASKS_FLAG, f"missing task name in {item!r}; write name or name:weight")
        if name in seen:
            raise UsageError(TASKS_FLAG, f"task {name!r} is listed twice in {value!r}; list each task once "
                                         "(use name:weight to weigh it more)")
        seen.add(name)
        requests.append(TaskRequest(name, weight))
    return requests


def normalized_weights(requests: Sequence[TaskRequest]) -> list[float]:
    total = sum(r.weight for r in requests)
    return [r.weight / total for r in requests]


def per_task_ints(flag: str, value: str | None, names: Sequence[str], *, minimum: int,
                  allow_default: bool = False) -> list[int | None] | None:
    """One integer per task, comma-separated; a single value applies to every task. None when not given.

    With ``allow_default``, an entry ``default`` (or ``none``) keeps that task's own setting (returned as None).
    """
    if value is None:
        return None
    text = str(value).strip()
    items = [t.strip() for t in text.split(",")]
    n = len(names)
    if len(items) not in (1, n):
        raise UsageError(flag, f"got {len(items)} values ({text}) for {n} tasks ({', '.join(names)}); give one "
                               "value per task, in the order of --jglue_tasks, or a single value for all")
    kind = "a positive integer" if minimum >= 1 else "a non-negative integer"
    parsed: list[int | None] = []
    for item in items:
        if allow_default and item.lower() in ("default", "none"):
            parsed.append(None)
            continue
        if not re.fullmatch(r"[+-]?\d+", item):
            extra = " or 'default'" if allow_default else ""
            raise UsageError(flag, f"{item!r} in {text!r} is not an integer; each value must be {kind}{extra}")
        number = int(item)
        if number < minimum:
            raise UsageError(flag, f"{number} in {text!r} is out of range; each value must be {kind}")
        parsed.append(number)
    return parsed * n if len(parsed) == 1 else parsed
