"""Two models on the same test items: the paired difference in acc and score, an exact test
on acc, a paired-bootstrap 95% interval of both differences, and a plain verdict; and each
model's figures with their uncertainty.

Each side may be several runs (one per training seed) evaluated on the same items. Every
statistic then works on the per-item means over the seeds, so the items stay the unit that
is resampled and tested. The test is the paired sign-flip permutation test of the sum of
those per-item differences: under no difference each item's difference is as likely
negated, and the p-value and the verdict's direction come from that one statistic. For
one seed it is McNemar's exact test. All pairs of one comparison are adjusted together
(Holm), and the verdict reads the adjusted p. Built on the per-sample records an
evaluation writes (`samples/<task>.jsonl`), matched by lm-eval's `doc_id`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..rundir.layout import RunLayout
from ..rundir.manifest import damaged
from .metrics import METRICS

LEVEL = 0.05  # a difference is called significant below this (Holm-adjusted) p-value
RESAMPLES = 10_000
MCNEMAR = "exact McNemar"
SIGN_FLIP = "exact sign-flip permutation of the per-item means"

Runs = list[list[dict[str, Any]]]  # per seed, the per-sample records of one task


@dataclass(frozen=True)
class Pair:
    """`a` against `b` on one task: differences are a − b (means over seeds, where several)."""

    a: str
    b: str
    task: str
    n: int
    seeds: int
    delta_acc: float
    delta_score: float
    p_value: float  # the test's own p on acc
    p_holm: float  # adjusted over every pair of the comparison
    test: str  # MCNEMAR (one seed a side) or SIGN_FLIP
    ci_acc: tuple[float, float]
    ci_score: tuple[float, float]
    verdict: str  # better / worse / no significant difference (on acc, p_holm below LEVEL)

    def record(self) -> dict[str, Any]:
        """The pair as comparison.json and `significance --json` write it; `p_mcnemar` too where
        the test is McNemar's (one seed), the name scripts read before several seeds existed."""
        fields = asdict(self)
        return fields | {"p_mcnemar": self.p_value} if self.test == MCNEMAR else fields


def standard_error(values: list[float] | np.ndarray) -> float:
    """Of a mean over test items: scipy's standard error of the mean (0 below two items)."""
    from scipy.stats import sem

    return float(sem(values, ddof=1)) if len(values) > 1 else 0.0


def combined_error(errors: list[float]) -> float:
    """Of the mean of k independent means (tasks weighing the same): √(Σ se²) / k."""
    return float(np.sqrt(np.sum(np.square(errors))) / len(errors)) if errors else float("nan")


def sign_flip_test(diff: np.ndarray, grid: int) -> float:
    """Two-sided exact p-value of the paired sign-flip permutation test of Σ diff: under no
    difference each item's difference is as likely negated, so all 2^n sign patterns are
    equally likely. `diff` lies on multiples of 1/grid (right/wrong outcomes averaged over
    `grid` seeds), so the items of magnitude j/grid add up to j·(2·Binomial(count, ½) − count)
    and the exact distribution is the convolution of those binomials. scipy's
    `permutation_test` is the same test but exact only up to about 20 differing items; beyond
    that it samples, and cannot resolve a p below 1/resamples. For one seed this is McNemar's
    exact test (only the items where exactly one model is right count)."""
    from scipy.stats import binom

    scaled = np.asarray(diff, float) * grid
    units = np.rint(scaled).astype(int)
    if not np.allclose(units, scaled, atol=1e-6):
        raise ValueError(f"per-item differences are not multiples of 1/{grid}")
    observed = abs(int(units.sum()))
    pmf, low = np.ones(1), 0  # the distribution of the sum, pmf[i] at low + i
    for magnitude, count in zip(*np.unique(np.abs(units[units != 0]), return_counts=True), strict=True):
        spread = np.zeros(2 * magnitude * count + 1)
        spread[:: 2 * magnitude] = binom.pmf(np.arange(count + 1), count, 0.5)
        pmf, low = np.convolve(pmf, spread), low - magnitude * count
    sums = np.arange(len(pmf)) + low
    return float(min(1.0, pmf[np.abs(sums) >= observed].sum()))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values: the k-th smallest of m times
    (m − k + 1), never below the adjusted one before it, at most 1. scipy offers only the
    false-discovery adjustments (`false_discovery_control`); Holm bounds the chance of any
    false "better" or "worse" in the family, which is what a verdict claims."""
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def verdict(delta_acc: float, p: float) -> str:
    """better / worse where p is below LEVEL; the direction is the sign of the tested sum."""
    if p >= LEVEL or delta_acc == 0:
        return "no significant difference"
    return "better" if delta_acc > 0 else "worse"


def adjusted(pairs: list[Pair]) -> list[Pair]:
    """The pairs of one comparison with their Holm-adjusted p and the verdict it gives."""
    return [replace(pair, p_holm=p, verdict=verdict(pair.delta_acc, p))
            for pair, p in zip(pairs, holm([pair.p_value for pair in pairs]), strict=True)]


def paired_interval(diff: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean per-item difference, resampling the items."""
    from scipy.stats import bootstrap

    diff = np.asarray(diff, float)
    if np.ptp(diff) == 0:  # every item differs alike: no spread to resample
        return float(diff[0]), float(diff[0])
    found = bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=0.95,
                      method="percentile", rng=np.random.default_rng(seed))
    return float(found.confidence_interval.low), float(found.confidence_interval.high)


def per_item(runs: Runs, metric: str, order: list[Any]) -> np.ndarray:
    """[seeds, items]: one metric of every run, items in `order` (their doc_id)."""
    return np.array([[by_id[doc_id][metric] for doc_id in order]
                     for by_id in ({row["doc_id"]: row for row in rows} for rows in runs)], float)


def same_items(task: str, labelled: dict[str, Runs]) -> list[Any]:
    """The doc_ids every run was evaluated on, in the first run's order; a UserError naming the
    runs when they differ (another test file, another limit)."""
    questions = {label: [{row["doc_id"]: row["doc"]["question"] for row in rows} for rows in runs]
                 for label, runs in labelled.items()}
    first = next(iter(questions.values()))[0]
    if any(found != first for runs in questions.values() for found in runs):
        raise UserError(f"{task}: {' and '.join(labelled)} were not evaluated on the same test items")
    return list(first)


def compare_samples(a: str, b: str, task: str, a_runs: Runs, b_runs: Runs) -> Pair:
    """The pair from both models' per-sample records of one task (one list per seed), its
    p adjusted as a family of one; `adjusted` takes the whole comparison's family."""
    order = same_items(task, {a: a_runs, b: b_runs})
    def diff(metric: str) -> np.ndarray:  # per item, of the means over the seeds
        return per_item(a_runs, metric, order).mean(axis=0) - per_item(b_runs, metric, order).mean(axis=0)

    diff_acc, diff_score = diff("acc"), diff("score")
    delta_acc = float(diff_acc.mean())
    p = sign_flip_test(diff_acc, math.lcm(len(a_runs), len(b_runs)))
    test = MCNEMAR if len(a_runs) == len(b_runs) == 1 else SIGN_FLIP
    return Pair(a, b, task, len(order), min(len(a_runs), len(b_runs)), delta_acc, float(diff_score.mean()),
                p, p, test, paired_interval(diff_acc), paired_interval(diff_score), verdict(delta_acc, p))


def pooled_metrics(task: str, label: str, runs: Runs) -> dict[str, Any]:
    """One model's figures on a task over its seeds: each metric's mean, its standard error
    over the items (of the per-item means), and where there are several seeds the value of
    each seed and their standard deviation."""
    order = same_items(task, {label: runs})
    pooled: dict[str, Any] = {"n": len(order), "seeds": len(runs)}
    for metric in METRICS:
        values = per_item(runs, metric, order)
        pooled[metric] = float(values.mean())
        pooled[f"{metric}_se"] = standard_error(values.mean(axis=0))
        if len(runs) > 1:
            pooled[f"{metric}_seeds"] = [float(value) for value in values.mean(axis=1)]
            pooled[f"{metric}_sd"] = float(np.std(values.mean(axis=1), ddof=1))
    return pooled


def compare_evaluations(a: Path, b: Path) -> list[Pair]:
    """`a` against `b` on every task both were evaluated on: two run directories, or two
    directories of `sftkey-lora eval` (anything holding metrics.json and samples/)."""
    tasks = [_evaluated_tasks(a), _evaluated_tasks(b)]
    common = [task for task in tasks[0] if task in tasks[1]]
    if not common:
        raise UserError(f"{a} and {b}: no task evaluated in both ({', '.join(tasks[0])} against "
                        f"{', '.join(tasks[1])})")
    return adjusted([compare_samples(str(a), str(b), task, [read_samples(RunLayout(a).samples_file(task))],
                                     [read_samples(RunLayout(b).samples_file(task))]) for task in common])


def _evaluated_tasks(root: Path) -> list[str]:
    path = RunLayout(root).metrics_file
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; evaluate it first (`sftkey-lora eval`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not readable as JSON ({err})") from None
    return [task for task, values in metrics.items() if isinstance(values, dict) and "tasks" not in values]


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path}: no per-sample records; evaluate the run again")
    if path.name in damaged(path.parent):
        raise UserError(f"{path}: damaged since it was written; evaluate the run again "
                        "(`sftkey-lora run` or `eval` redoes it)")
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable as per-sample records ({err}); "
                        "evaluate the run again") from None


def pairs_table(pairs: list[Pair]) -> str:
    """A Markdown table of the pairs."""
    lines = ["| a − b | task | n | seeds | Δ acc (95% CI) | p | p (Holm) | Δ score (95% CI) | verdict |",
             "|---|---|---:|---:|---|---:|---:|---|---|"]
    for pair in pairs:
        lines.append(f"| {pair.a} − {pair.b} | {pair.task.removeprefix('sftkey_')} | {pair.n} | "
                     f"{pair.seeds} | "
                     f"{pair.delta_acc:+.3f} ({pair.ci_acc[0]:+.3f}, {pair.ci_acc[1]:+.3f}) | "
                     f"{pair.p_value:.3g} | {pair.p_holm:.3g} | {pair.delta_score:+.3f} "
                     f"({pair.ci_score[0]:+.3f}, {pair.ci_score[1]:+.3f}) | {pair.verdict} |")
    return "\n".join(lines)
