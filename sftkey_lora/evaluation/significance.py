"""Two models on the same test items: the paired difference in acc and score, an exact
McNemar test on acc (only the items where exactly one of them is right carry information),
a paired-bootstrap 95% interval of both differences, and a plain verdict.

Built on the per-sample records an evaluation writes (`samples/<task>.jsonl`), matched by
lm-eval's `doc_id`; the statistics are scipy's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

LEVEL = 0.05  # a difference is called significant below this p-value
RESAMPLES = 10_000


@dataclass(frozen=True)
class Pair:
    """`a` against `b` on one task: differences are a − b."""

    a: str
    b: str
    task: str
    n: int
    delta_acc: float
    delta_score: float
    p_mcnemar: float
    ci_acc: tuple[float, float]
    ci_score: tuple[float, float]
    verdict: str  # better / worse / no significant difference (on acc, at LEVEL)


def standard_error(values: list[float]) -> float:
    """Of a mean over test items: the sample standard deviation over √n (0 below two items)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def combined_error(errors: list[float]) -> float:
    """Of the mean of k independent means (tasks weighing the same): √(Σ se²) / k."""
    return float(np.sqrt(np.sum(np.square(errors))) / len(errors)) if errors else float("nan")


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired right/wrong outcomes: under no difference,
    the items only `a` gets right are Binomial(discordant items, 1/2)."""
    from scipy.stats import binomtest

    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_interval(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of mean(a − b), resampling the items."""
    from scipy.stats import bootstrap

    diff = np.asarray(a, float) - np.asarray(b, float)
    if np.ptp(diff) == 0:  # every item differs alike: no spread to resample
        return float(diff[0]), float(diff[0])
    found = bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=0.95,
                      method="percentile", rng=np.random.default_rng(seed))
    return float(found.confidence_interval.low), float(found.confidence_interval.high)


def compare_samples(a: str, b: str, task: str, a_rows: list[dict[str, Any]],
                    b_rows: list[dict[str, Any]]) -> Pair:
    """The pair from both models' per-sample records of one task."""
    by_id = {row["doc_id"]: row for row in b_rows}
    if sorted(by_id) != sorted(row["doc_id"] for row in a_rows) or any(
            by_id[row["doc_id"]]["doc"]["question"] != row["doc"]["question"] for row in a_rows):
        raise UserError(f"{task}: {a} and {b} were not evaluated on the same test items")
    matched = [(row, by_id[row["doc_id"]]) for row in a_rows]
    acc_a, acc_b = (np.array([pair[i]["acc"] for pair in matched]) > 0.5 for i in (0, 1))
    score_a, score_b = (np.array([pair[i]["score"] for pair in matched], float) for i in (0, 1))
    delta_acc = float(acc_a.mean() - acc_b.mean())
    p = mcnemar_exact(acc_a, acc_b)
    verdict = ("no significant difference" if p >= LEVEL or delta_acc == 0
               else "better" if delta_acc > 0 else "worse")
    return Pair(a, b, task, len(matched), delta_acc, float(score_a.mean() - score_b.mean()), p,
                paired_interval(acc_a, acc_b), paired_interval(score_a, score_b), verdict)


def read_samples(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path}: no per-sample records; evaluate the run again")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pairs_table(pairs: list[Pair]) -> str:
    """A Markdown table of the pairs."""
    lines = ["| a − b | task | n | Δ acc (95% CI) | McNemar p | Δ score (95% CI) | verdict |",
             "|---|---|---:|---|---:|---|---|"]
    for pair in pairs:
        lines.append(f"| {pair.a} − {pair.b} | {pair.task.removeprefix('sftkey_')} | {pair.n} | "
                     f"{pair.delta_acc:+.3f} ({pair.ci_acc[0]:+.3f}, {pair.ci_acc[1]:+.3f}) | "
                     f"{pair.p_mcnemar:.3g} | {pair.delta_score:+.3f} ({pair.ci_score[0]:+.3f}, "
                     f"{pair.ci_score[1]:+.3f}) | {pair.verdict} |")
    return "\n".join(lines)
