"""How the search ran, in words, for the report and the model card (both read the recipe's inputs)."""
from __future__ import annotations

from typing import Any


def objective_of(inputs: dict[str, Any]) -> str | None:
    """The search objective of an lm-eval run ("auto", "choice_prob" or "task"); None for the judged benches."""
    evaluator = inputs.get("evaluator") or {}
    return evaluator.get("objective") if isinstance(evaluator, dict) else None


def search_sentence(inputs: dict[str, Any]) -> str:
    """E.g. "scale first (one uniform weight per vector over the whole range, then the shape as offsets from
    the best scale); searched on choice_prob (the mean probability of the right choice); held-out: each task's own
    metric"."""
    parts = []
    if inputs.get("scale_search") == "on":
        parts.append("scale first (one uniform weight per vector over the whole range, then the shape as offsets "
                     "from the best scale)")
    objective = objective_of(inputs)
    if objective == "choice_prob":
        parts.append("searched on choice_prob (the mean probability of the right choice); held-out: each task's "
                     "own metric")
    elif objective == "auto":
        parts.append("searched on choice_prob (the mean probability of the right choice) for the multiple-choice "
                     "tasks and on their own metric for the others; held-out: each task's own metric")
    elif objective == "task":
        parts.append("searched on each task's own metric")
    evaluator = inputs.get("evaluator") or {}
    if isinstance(evaluator, dict) and evaluator.get("item_subset"):
        parts.append(f"after {evaluator.get('item_subset_after')} trials scored in full, each trial scored "
                     f"{evaluator['item_subset']:g} of the search documents (anchor points) and was given their "
                     "estimate of the full score"
                     + ("; a new best estimate was confirmed on every document"
                        if evaluator.get("item_subset_confirm", True) else ""))
    return "; ".join(parts)


def search_flags(inputs: dict[str, Any]) -> list[str]:
    """The flags that reproduce the search's stages and objective."""
    flags = [f"--scale_search {'on' if inputs.get('scale_search') == 'on' else 'off'}"]
    if (objective := objective_of(inputs)) is not None:
        flags.append(f"--search_objective {objective}")
    evaluator = inputs.get("evaluator") or {}
    if isinstance(evaluator, dict) and evaluator.get("item_subset"):
        flags += [f"--item_subset {evaluator['item_subset']:g}",
                  f"--item_subset_after {evaluator.get('item_subset_after')}"]
    return flags
