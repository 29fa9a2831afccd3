"""Which trial is declared best: the rule that keeps late trials from winning on the search items' noise.

Past the scale stage, many trials score merges close to one another on the same few search items, and the highest
of many noisy scores is biased upwards (a winner's curse): more trials would make the declared best worse on
held-out items. So with the scale stage, a trial of the shape stage (block design or sampler) replaces the best
scale-stage trial only when it beats it on the search items beyond the paired 95% bootstrap interval (the
verdict's own test, ``search.verdict.paired_difference``, over each item's value); among those that do, the one
with the highest search score wins. Without per-item values (a smooth --search_objective, --item_subset, a
pruned scale trial) the highest score wins, as it does in a study without the scale stage.

Only search items are read: the held-out items stay untouched by the search and the verdict keeps its meaning.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from task_vector_opt.search.scale_first import SCALE_STAGE, STAGE_ATTR
from task_vector_opt.search.verdict import paired_difference

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

ITEM_VALUES_ATTR = "item_values"  # trial user attr (scale-first studies): each search item's value
SELECTION_CONFIDENCE = 0.95  # the paired interval a shape trial must clear; 0: the highest search score wins


def chosen_trial(trials: Sequence[FrozenTrial], confidence: float = SELECTION_CONFIDENCE) -> FrozenTrial:
    """The declared best of ``trials`` (completed ones are read; ValueError when none completed). ``confidence``
    0 is the plain rule, the highest search score (benchmarks/bench_search.py compares the two)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise ValueError("no completed trial")
    best = max(complete, key=lambda t: t.value)
    scale = [t for t in complete if t.user_attrs.get(STAGE_ATTR) == SCALE_STAGE]
    if not scale or confidence <= 0:
        return best
    incumbent = max(scale, key=lambda t: t.value)
    kept = incumbent.user_attrs.get(ITEM_VALUES_ATTR)
    challengers = sorted((t for t in complete if t.user_attrs.get(STAGE_ATTR) != SCALE_STAGE
                          and t.value > incumbent.value), key=lambda t: t.value, reverse=True)
    for trial in challengers:
        values = trial.user_attrs.get(ITEM_VALUES_ATTR)
        if not values or not kept:
            return trial  # nothing to pair: the highest score, as without the rule
        gain = paired_difference(values, kept, "best scale", confidence=confidence)
        if gain is not None and gain.low > 0:
            return trial
    return incumbent

