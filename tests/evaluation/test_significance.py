"""Paired comparisons: the exact McNemar p-value, the bootstrap interval's coverage, and the
verdict from two models' per-sample records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.evaluation.significance import compare_samples, mcnemar_exact, paired_interval


def outcomes(only_a: int, only_b: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return np.array(a), np.array(b)


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_items() -> None:
    # 8 items only a gets right, 2 only b: two-sided, 2·P(X ≤ 2) for X ~ Binomial(10, 1/2).
    expected = 2 * sum(math.comb(10, k) for k in range(3)) / 2**10  # 0.109375
    assert mcnemar_exact(*outcomes(8, 2, both=150, neither=40)) == pytest.approx(expected)
    assert mcnemar_exact(*outcomes(2, 8, both=3, neither=0)) == pytest.approx(expected)  # symmetric
    # The concordant items do not count; no discordant item at all is no evidence.
    assert mcnemar_exact(*outcomes(8, 2, both=0, neither=0)) == pytest.approx(expected)
    assert mcnemar_exact(*outcomes(0, 0, both=5, neither=5)) == 1.0
    assert mcnemar_exact(*outcomes(12, 0, both=0, neither=0)) == pytest.approx(2 / 2**12)


def test_the_bootstrap_interval_covers_the_true_difference_about_95_times_in_100() -> None:
    """300 synthetic experiments of 200 paired items with a known difference of 0.1."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(300):
        a = rng.random(200) < 0.7
        b = rng.random(200) < 0.6
        low, high = paired_interval(a, b, resamples=2000, seed=trial)
        covered += low <= 0.1 <= high
    assert 0.90 <= covered / 300 <= 0.99


def rows(correct: list[bool], question: str = "q") -> list[dict]:
    return [{"doc_id": i, "doc": {"question": f"{question}{i}"}, "acc": float(ok), "score": 0.7 * ok + 0.3}
            for i, ok in enumerate(correct)]


def test_the_verdict_follows_the_test_on_the_same_items() -> None:
    strong, weak = rows([True] * 90 + [False] * 10), rows([True] * 60 + [False] * 40)
    better = compare_samples("a", "b", "t", strong, weak)
    assert better.verdict == "better" and better.delta_acc == pytest.approx(0.3) and better.n == 100
    assert better.p_mcnemar < 1e-6 and better.ci_acc[0] > 0 and better.delta_score == pytest.approx(0.21)
    # 10 items only a gets right, 9 only b: a difference of one item in 100.
    close = compare_samples("a", "b", "t", rows([True] * 61 + [False] * 39),
                            rows([False] * 10 + [True] * 60 + [False] * 30))
    assert close.verdict == "no significant difference" and close.ci_acc[0] < 0 < close.ci_acc[1]
    worse = compare_samples("b", "a", "t", weak, strong)
    assert worse.verdict == "worse" and worse.delta_acc == pytest.approx(-0.3)
    # Matched by item, not by position.
    assert compare_samples("a", "b", "t", list(reversed(strong)), weak) == better


def test_models_evaluated_on_different_items_are_not_compared() -> None:
    with pytest.raises(UserError, match="not evaluated on the same test items"):
        compare_samples("a", "b", "t", rows([True] * 5), rows([True] * 5, question="other"))
    with pytest.raises(UserError, match="not evaluated on the same test items"):
        compare_samples("a", "b", "t", rows([True] * 5), rows([True] * 4))
