"""The honest verdict: is the best merge really better than plain addition (w = 1) and the target (w = 0)?

Paired over held-out items: each item's score under the best merge minus its score under the reference,
with a 95% bootstrap interval (scipy's BCa) for the mean difference. An interval that contains 0 means the
search found nothing that held-out items can tell from the reference.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999
BOOTSTRAP_SEED = 0  # the interval of a finished run is reproducible


@dataclass
class PairedDifference:
    reference: str  # "w=1" or "w=0"
    difference: float  # mean over items of (best - reference)
    low: float  # 95% bootstrap interval of the mean difference
    high: float
    n_items: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_difference(best: dict[str, float], reference: dict[str, float], reference_label: str,
                      confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> PairedDifference | None:
    """Mean of best[i] - reference[i] over the items both scored, with its bootstrap interval over items.

    Item values are what the evaluator gives per item (``Score.item_values``: their mean is the score), so the
    mean difference is exactly the difference of the held-out scores. None with fewer than two shared items.
    """
    from scipy.stats import bootstrap

    keys = sorted(best.keys() & reference.keys())
    if len(keys) < 2:
        return None
    differences = np.array([best[k] - reference[k] for k in keys], dtype=np.float64)
    mean = float(differences.mean())
    if np.all(differences == differences[0]):  # no spread: every resample has the same mean (BCa is undefined)
        return PairedDifference(reference_label, mean, mean, mean, len(keys))
    with warnings.catch_warnings():  # BCa's own complaint about skewed data: the percentile fallback follows
        warnings.simplefilter("ignore")
        result = bootstrap((differences,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                           method="BCa", rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa can fail on very skewed data: percentile instead
        result = bootstrap((differences,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                           method="percentile", rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return PairedDifference(reference_label, mean, low, high, len(keys))


REFERENCE_WORDS = {"w=1": "plain addition (w=1)", "w=0": "the unchanged target (w=0)"}


def verdict_sentence(comparison: PairedDifference | None, best_label: str) -> str:
    """One plain sentence about the best merge against one reference."""
    if comparison is None:
        return "no per-item held-out scores, so no verdict against the baselines (add held-out items)"
    reference = REFERENCE_WORDS.get(comparison.reference, comparison.reference)
    if best_label == comparison.reference:
        return f"the best search trial is {reference} itself"
    numbers = (f"{comparison.difference:+.4f}, 95% interval [{comparison.low:+.4f}, {comparison.high:+.4f}] over "
               f"{comparison.n_items} held-out items")
    if comparison.low > 0:
        return f"the best merge beats {reference} on held-out items ({numbers})"
    if comparison.high < 0:
        return (f"the best merge is worse than {reference} on held-out items ({numbers}): the search fitted its "
                "own items")
    return f"the best merge is not distinguishable from {reference} on held-out items ({numbers})"


def holdout_verdict(item_values: dict[str, dict[str, float]], best_label: str) -> dict:
    """{"vs w=1": ..., "vs w=0": ..., "sentences": [...]} from each candidate's per-item held-out values."""
    out: dict = {"sentences": []}
    best = item_values.get(best_label) or {}
    for reference in ("w=1", "w=0"):
        if reference not in item_values:
            continue
        comparison = paired_difference(best, item_values[reference], reference)
        out[f"vs {reference}"] = comparison.as_dict() if comparison else None
        out["sentences"].append(verdict_sentence(comparison, best_label))
    return out
