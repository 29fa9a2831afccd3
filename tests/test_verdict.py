"""The held-out verdict: paired differences over items with a bootstrap interval, and the words that follow."""
import math

import numpy as np
import pytest

from task_vector_opt.search.verdict import holdout_verdict, paired_difference, verdict_sentence


def items(values) -> dict[str, float]:
    return {f"task/{i}": float(v) for i, v in enumerate(values)}


def test_a_constant_difference_has_a_zero_width_interval_at_that_difference():
    reference = items(np.linspace(0, 1, 50))
    best = {k: v + 0.25 for k, v in reference.items()}
    result = paired_difference(best, reference, "w=1")
    assert result.difference == pytest.approx(0.25, abs=1e-12)
    assert result.low == pytest.approx(0.25, abs=1e-12) and result.high == pytest.approx(0.25, abs=1e-12)


def test_the_interval_of_a_proportion_matches_the_normal_approximation():
    # 400 items; the best merge gets 60 more right than the reference and none fewer: mean 0.15, and the
    # 95% interval of a mean of 0/1 values with n = 400 is 0.15 +- 1.96 * sqrt(0.15 * 0.85 / 400) = +-0.035.
    reference = items([0] * 400)
    best = items([1] * 60 + [0] * 340)
    result = paired_difference(best, reference, "w=1")
    half_width = 1.96 * math.sqrt(0.15 * 0.85 / 400)
    assert result.difference == pytest.approx(0.15, abs=1e-12) and result.n_items == 400
    assert result.low == pytest.approx(0.15 - half_width, abs=0.006)
    assert result.high == pytest.approx(0.15 + half_width, abs=0.006)


def test_pairing_over_items_sees_a_small_gain_that_unpaired_spreads_would_hide():
    rng = np.random.default_rng(1)
    reference_values = rng.uniform(0, 1, 200)  # items differ a lot in difficulty
    gain = np.where(rng.uniform(0, 1, 200) < 0.5, 0.04, 0.0)  # the best merge adds a little on half the items
    result = paired_difference(items(reference_values + gain), items(reference_values), "w=1")
    assert result.low > 0
    assert result.high - result.low < 0.02  # an unpaired interval would be about 0.08 wide


def test_only_items_both_merges_scored_are_paired():
    best = {"a": 1.0, "b": 0.0, "c": 1.0}
    reference = {"b": 0.0, "c": 0.0, "d": 1.0}
    result = paired_difference(best, reference, "w=0")
    assert result.n_items == 2 and result.difference == pytest.approx(0.5)
    assert paired_difference({"a": 1.0}, {"a": 0.0}, "w=1") is None  # one item: no interval


@pytest.mark.parametrize("best_values, words", [
    ([1] * 30 + [0] * 170, "beats plain addition (w=1)"),
    ([1] * 12 + [-1] * 9 + [0] * 179, "not distinguishable from plain addition (w=1)"),  # 12 gains, 9 losses
])
def test_the_sentence_says_whether_the_best_is_distinguishable_from_plain_addition(best_values, words):
    verdict = holdout_verdict({"w=1": items([0] * 200), "w=0": items([0] * 200), "trial 7": items(best_values)},
                              "trial 7")
    assert words in verdict["sentences"][0]
    assert "the unchanged target (w=0)" in verdict["sentences"][1]
    assert verdict["vs w=1"]["n_items"] == 200


def test_a_best_worse_than_plain_addition_is_called_so():
    worse = paired_difference(items([0] * 200), items([1] * 40 + [0] * 160), "w=1")
    assert "worse than plain addition" in verdict_sentence(worse, "trial 3")
    assert "is plain addition (w=1) itself" in verdict_sentence(paired_difference(items([1, 0]), items([1, 0]), "w=1"),
                                                                "w=1")
    assert "no per-item" in verdict_sentence(None, "trial 3")
