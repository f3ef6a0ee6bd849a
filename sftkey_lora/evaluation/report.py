"""`report.md` and the bar chart of a run's evaluation, and the tables of a comparison, in
the form of the paper's Table 1: a row per model or strategy, a column per task, then the
average; against a baseline row, the relative change in parentheses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..plots import cell, plot_metric_bars, table_columns
from ..rundir.files import write_text_atomic
from ..rundir.layout import RunLayout
from .metrics import METRICS

Results = dict[str, dict[str, dict[str, Any]]]  # row label -> task -> {acc, fmt, score, ...}


def results_table(results: Results, metric: str, baseline: str | None = None) -> str:
    """A Markdown table of one metric; with `baseline`, each cell of the other rows also gives
    its relative change against that row."""
    columns = table_columns(results)
    lines = ["| | " + " | ".join(c.removeprefix("sftkey_") for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, metrics in results.items():
        cells = []
        for column in columns:
            value = cell(metrics, column, metric)
            error, spread = standard_error_of(metrics, column, metric), seed_spread(metrics, column, metric)
            text = (f"{value:.3f}" + (f" ± {error:.3f}" if error == error else "")
                    + (f" [sd {spread:.3f}]" if spread == spread else ""))
            if baseline is not None and label != baseline:
                base = cell(results[baseline], column, metric)
                if base == base and base != 0 and value == value:  # both measured (not NaN)
                    text += f" ({(value - base) / base:+.1%})"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def standard_error_of(metrics: dict[str, dict[str, Any]], column: str, metric: str) -> float:
    """A cell's standard error: the task's, or for `average` that of the mean over the tasks;
    NaN where the evaluation did not record it."""
    from .significance import combined_error

    key = f"{metric}_se"
    if column != "average":
        return metrics.get(column, {}).get(key, float("nan"))
    tasks = [values for values in metrics.values() if "tasks" not in values]
    return combined_error([values.get(key, float("nan")) for values in tasks])


def seed_spread(metrics: dict[str, dict[str, Any]], column: str, metric: str) -> float:
    """A cell's standard deviation over training seeds (for `average`, of each seed's mean over
    the tasks); NaN for one seed."""
    tasks = [metrics.get(column, {})] if column != "average" else [
        values for values in metrics.values() if "tasks" not in values]
    per_seed = [values.get(f"{metric}_seeds") for values in tasks]
    if not per_seed or any(seeds is None for seeds in per_seed):
        return float("nan")
    return float(np.std(np.mean(per_seed, axis=0), ddof=1))


def metric_titles(alpha: float) -> tuple[tuple[str, str], ...]:
    """(metric, section title) in the order reports show them: the score first."""
    return (("score", f"Score = {alpha:g}·acc + {1 - alpha:g}·fmt"), ("acc", "Accuracy"),
            ("fmt", "Format adherence (the format each model was trained on)"),
            ("fmt_tags", "Tag format (strict, whatever the training)"))


def write_run_report(out: RunLayout, label: str, metrics: dict[str, dict[str, Any]], described: str,
                     alpha: float, training: str | None = None) -> Path:
    """report.md of one evaluated model (and its training, for a run) and its bar chart."""
    results = {label: metrics}
    plot_metric_bars(results, METRICS, out.eval_plot)
    parts = [f"# {label}: evaluation", "", described, ""]
    for metric, title in metric_titles(alpha):
        parts += [f"## {title}", "", results_table(results, metric), ""]
    parts += ["Per task: " + ", ".join(f"{task} n={values['n']}" for task, values in metrics.items()
                                       if "n" in values), ""]
    judged = {task: values["judge"] for task, values in metrics.items() if "judge" in values}
    if judged:
        parts += ["Judge verdicts (samples without one keep the exact check): " +
                  "; ".join(f"{task} {counts}" for task, counts in judged.items()), ""]
    if training:
        parts += ["## Training", "", "```", training, "```", ""]
    plots = sorted(out.plots_dir.glob("*.png"))
    parts += ["## Plots", ""] + [f"![{path.name}]({path.relative_to(out.root)})" for path in plots]
    write_text_atomic(out.report_file, "\n".join(parts) + "\n")
    return out.report_file
