"""Paired comparisons: the exact sign-flip test (McNemar's for one seed, scipy's permutation
test where that is exact), Holm's adjustment, the bootstrap interval's coverage, the verdict
from two models' per-sample records, and the same pooled over seeds."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import binomtest, permutation_test

from sftkey_lora.errors import UserError
from sftkey_lora.evaluation.significance import (
    MCNEMAR,
    SIGN_FLIP,
    adjusted,
    compare_samples,
    holm,
    paired_interval,
    pooled_metrics,
    sign_flip_test,
)


def outcomes(only_a: int, only_b: int, both: int, neither: int) -> np.ndarray:
    """Per-item differences a − b of right (1) / wrong (0) outcomes."""
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return np.array(a) - np.array(b)


def test_one_seed_is_mcnemars_exact_binomial_test_of_the_discordant_items() -> None:
    # 8 items only a gets right, 2 only b: two-sided, 2·P(X ≤ 2) for X ~ Binomial(10, 1/2).
    expected = 2 * sum(math.comb(10, k) for k in range(3)) / 2**10  # 0.109375
    assert sign_flip_test(outcomes(8, 2, both=150, neither=40), 1) == pytest.approx(expected)
    assert sign_flip_test(outcomes(2, 8, both=3, neither=0), 1) == pytest.approx(expected)  # symmetric
    # The concordant items do not count; no discordant item at all is no evidence.
    assert sign_flip_test(outcomes(8, 2, both=0, neither=0), 1) == pytest.approx(expected)
    assert sign_flip_test(outcomes(0, 0, both=5, neither=5), 1) == 1.0
    assert sign_flip_test(outcomes(12, 0, both=0, neither=0), 1) == pytest.approx(2 / 2**12)
    # scipy's binomial test on the discordant counts, far past where enumeration is possible.
    for ahead, behind in [(60, 40), (120, 70), (33, 34), (90, 10)]:
        assert sign_flip_test(outcomes(ahead, behind, both=20, neither=20), 1) == pytest.approx(
            binomtest(ahead, ahead + behind).pvalue, rel=1e-9, abs=1e-300)


def test_several_seeds_give_scipys_exact_sign_flip_permutation_test() -> None:
    """Per-item means over 3 seeds on one side and 2 on the other (a grid of sixths), few enough
    differing items for scipy to enumerate every sign pattern (given in sixths, whole numbers,
    so that its sums are exact)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        diff = rng.integers(0, 4, 14) / 3 - rng.integers(0, 3, 14) / 2
        sixths = np.rint(diff * 6)
        exact = permutation_test((sixths,), np.sum, permutation_type="samples", n_resamples=np.inf)
        assert sign_flip_test(diff, 6) == pytest.approx(exact.pvalue, rel=1e-9)


def test_the_verdict_and_its_p_come_from_one_statistic() -> None:
    """Two cases where a sign count and the mean point different ways (3 seeds, per-item means)."""
    # 30 items ahead by a third, 12 behind by a whole: a sign count calls it significant, yet
    # the differences sum to -2 (of 42 items) and the interval spans 0.
    many_small = np.array([1 / 3] * 30 + [-1] * 12 + [0] * 58)
    assert binomtest(30, 42).pvalue < 0.01
    assert sign_flip_test(many_small, 3) > 0.5
    # 15 items ahead by a whole, 15 behind by a third: a sign count sees nothing (p 1) while
    # the sum is +10 and the interval excludes 0.
    few_large = np.array([1] * 15 + [-1 / 3] * 15 + [0] * 70)
    assert binomtest(15, 30).pvalue == 1.0
    assert sign_flip_test(few_large, 3) < 0.05 and paired_interval(few_large)[0] > 0
    # Through compare_samples: three seeds of right/wrong outcomes giving those per-item means.
    a = [[True] * 15 + [False] * 85] * 3
    b = [[False] * 15 + [True] * 15 + [False] * 70, [False] * 15 + [False] * 15 + [False] * 70,
         [False] * 15 + [False] * 15 + [False] * 70]
    pair = compare(a, b)
    assert pair.test == SIGN_FLIP and pair.p_value == pytest.approx(sign_flip_test(few_large, 3))
    assert pair.verdict == "better" and pair.delta_acc == pytest.approx(0.1) and pair.ci_acc[0] > 0
    wrong_way = compare(b, a)
    assert wrong_way.verdict == "worse" and wrong_way.p_value == pair.p_value


def test_holm_adjusts_a_family_of_p_values() -> None:
    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1: 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5.
    assert holm([0.04, 0.01, 0.5, 0.03]) == pytest.approx([0.09, 0.04, 0.5, 0.09])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and holm([0.02]) == [0.02]
    assert holm([0.5, 0.4, 0.9]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1


def test_the_verdict_reads_the_adjusted_p() -> None:
    # p 0.0225 alone (13 discordant items, 11 of them ahead) is significant; one of three is not.
    alone = compare([True] * 11 + [False] * 2 + [True] * 20, [False] * 11 + [True] * 2 + [True] * 20)
    assert alone.verdict == "better" and alone.p_holm == alone.p_value < 0.05
    null = compare([True] * 10, [True] * 10)
    family = adjusted([alone, null, null])
    assert family[0].p_holm == pytest.approx(3 * alone.p_value) and family[0].p_value == alone.p_value
    assert family[0].verdict == "no significant difference" and family[1].p_holm == 1.0


def test_the_bootstrap_interval_covers_the_true_difference_about_95_times_in_100() -> None:
    """300 synthetic experiments of 200 paired items with a known difference of 0.1."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(300):
        a = rng.random(200) < 0.7
        b = rng.random(200) < 0.6
        low, high = paired_interval(a.astype(int) - b, resamples=2000, seed=trial)
        covered += low <= 0.1 <= high
    assert 0.90 <= covered / 300 <= 0.99


def rows(correct: list[bool], question: str = "q") -> list[dict]:
    return [{"doc_id": i, "doc": {"question": f"{question}{i}"}, "acc": float(ok), "fmt": 1.0,
             "fmt_tags": 1.0, "score": 0.7 * ok + 0.3} for i, ok in enumerate(correct)]


def compare(a: list[bool] | list[list[bool]], b: list[bool] | list[list[bool]]):
    """compare_samples on one seed per side (a flat list) or one list per seed."""
    runs = [(rows(x) for x in side) if isinstance(side[0], list) else [rows(side)] for side in (a, b)]
    return compare_samples("a", "b", "t", *(list(side) for side in runs))


def test_the_verdict_follows_the_test_on_the_same_items() -> None:
    strong, weak = rows([True] * 90 + [False] * 10), rows([True] * 60 + [False] * 40)
    better = compare_samples("a", "b", "t", [strong], [weak])
    assert better.verdict == "better" and better.delta_acc == pytest.approx(0.3) and better.n == 100
    assert better.p_value < 1e-6 and better.test == MCNEMAR and better.ci_acc[0] > 0
    assert better.delta_score == pytest.approx(0.21)
    # 10 items only a gets right, 9 only b: a difference of one item in 100.
    close = compare([True] * 61 + [False] * 39, [False] * 10 + [True] * 60 + [False] * 30)
    assert close.verdict == "no significant difference" and close.ci_acc[0] < 0 < close.ci_acc[1]
    worse = compare_samples("b", "a", "t", [weak], [strong])
    assert worse.verdict == "worse" and worse.delta_acc == pytest.approx(-0.3)
    # Matched by item, not by position.
    assert compare_samples("a", "b", "t", [list(reversed(strong))], [weak]) == better


def test_models_evaluated_on_different_items_are_not_compared() -> None:
    with pytest.raises(UserError, match="not evaluated on the same test items"):
        compare_samples("a", "b", "t", [rows([True] * 5)], [rows([True] * 5, question="other")])
    with pytest.raises(UserError, match="not evaluated on the same test items"):
        compare_samples("a", "b", "t", [rows([True] * 5)], [rows([True] * 4)])
    with pytest.raises(UserError, match="not evaluated on the same test items"):  # one seed of a differs
        compare_samples("a", "b", "t", [rows([True] * 5), rows([True] * 4)], [rows([True] * 5)])


def test_seeds_pool_into_per_item_means() -> None:
    """Three seeds: the item, not the (seed, item) pair, is the unit tested and resampled."""
    a = [[True] * 6 + [False] * 4, [True] * 5 + [False] * 5, [True] * 7 + [False] * 3]
    b = [[False] * 10] * 3
    pair = compare(a, b)
    assert pair.seeds == 3 and pair.n == 10 and pair.delta_acc == pytest.approx(0.6)
    # Items 0-4 are ahead by 1, 5 by 2/3, 6 by 1/3: of the 2^7 sign patterns only the
    # observed one and its negation reach a sum of 5 + 2/3 + 1/3 = 6.
    assert pair.p_value == pytest.approx(2 / 2**7) and pair.test == SIGN_FLIP
    assert 0.3 < pair.ci_acc[0] < 0.6 < pair.ci_acc[1] <= 0.9
    # One seed alone is the McNemar case; the mean of identical seeds changes nothing.
    assert compare([a[0]] * 3, [b[0]] * 3) == replace(compare(a[0], b[0]), seeds=3, test=SIGN_FLIP)


def test_pooled_metrics_give_the_mean_the_item_error_and_the_spread_over_seeds() -> None:
    runs = [rows([True] * 6 + [False] * 4), rows([True] * 5 + [False] * 5), rows([True] * 7 + [False] * 3)]
    pooled = pooled_metrics("t", "a", runs)
    assert pooled["acc"] == pytest.approx(0.6) and pooled["acc_seeds"] == pytest.approx([0.6, 0.5, 0.7])
    assert pooled["acc_sd"] == pytest.approx(0.1) and (pooled["n"], pooled["seeds"]) == (10, 3)
    per_item = np.array([1, 1, 1, 1, 1, 2 / 3, 1 / 3, 0, 0, 0])
    assert pooled["acc_se"] == pytest.approx(np.std(per_item, ddof=1) / np.sqrt(10))
    assert pooled["score"] == pytest.approx(0.7 * 0.6 + 0.3) and pooled["fmt_sd"] == 0
    alone = pooled_metrics("t", "a", runs[:1])
    assert alone["acc_se"] == pytest.approx(np.sqrt(0.24 / 9)) and "acc_sd" not in alone


def write_evaluation(root, tasks: dict[str, list[bool]]):
    """A directory as `sftkey-lora eval` leaves it: metrics.json and samples/<task>.jsonl."""
    (root / "samples").mkdir(parents=True)
    for task, correct in tasks.items():
        lines = [json.dumps(row) + "\n" for row in rows(correct)]
        (root / "samples" / f"{task}.jsonl").write_text("".join(lines))
    metrics = {task: {"acc": sum(correct) / len(correct)} for task, correct in tasks.items()}
    (root / "metrics.json").write_text(json.dumps({**metrics, "sftkey": {"acc": 0.5, "tasks": list(tasks)}}))
    return root


def test_significance_compares_two_evaluations_on_their_common_tasks(cli, tmp_path) -> None:
    a = write_evaluation(tmp_path / "a", {"sftkey_x": [True] * 90 + [False] * 10, "sftkey_y": [True] * 3})
    b = write_evaluation(tmp_path / "b", {"sftkey_x": [True] * 60 + [False] * 40})
    code, out, err = cli("significance", str(a), str(b))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and lines[2].startswith(f"| {a} − {b} | x | 100 | 1 | +0.300 (")
    assert lines[2].endswith("| better |")
    code, out, _ = cli("significance", str(b), str(a), "--json")
    (pair,) = json.loads(out)
    assert (pair["task"], pair["verdict"], pair["n"]) == ("sftkey_x", "worse", 100)
    assert pair["delta_acc"] == pytest.approx(-0.3) and pair["p_mcnemar"] == pair["p_value"] < 1e-6
    assert pair["test"] == MCNEMAR and pair["p_holm"] == pair["p_value"]  # one task: a family of one


def test_significance_names_what_it_cannot_compare(cli, capsys, tmp_path) -> None:
    a = write_evaluation(tmp_path / "a", {"sftkey_x": [True] * 5})
    code, _, err = cli("significance", str(a), str(tmp_path / "missing"))
    assert code == 2 and f"{tmp_path / 'missing' / 'metrics.json'}: not found" in err
    other = write_evaluation(tmp_path / "other", {"sftkey_y": [True] * 5})
    code, _, err = cli("significance", str(a), str(other))
    assert code == 2 and "no task evaluated in both" in err
    shorter = write_evaluation(tmp_path / "shorter", {"sftkey_x": [True] * 4})
    code, _, err = cli("significance", str(a), str(shorter))
    assert code == 2 and "not evaluated on the same test items" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exited:  # argparse's own exit: usage and one error line
        cli("compare", "recipes/quickstart.yaml", "--seeds", "0,0")
    assert exited.value.code == 2 and "--seeds: distinct whole numbers" in capsys.readouterr().err
