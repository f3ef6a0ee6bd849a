"""Figures as PNG: loss curves per segment and per strategy, and acc / fmt / score bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .rundir.crashpoints import renamed
from .rundir.layout import KEY_LOSS, THINKING_LOSS

CURVES = (("loss", "training loss (stage labels)"), (THINKING_LOSS, "held-out thinking tokens"),
          (KEY_LOSS, "held-out key tokens"))


def plot_stage_losses(history: list[dict[str, Any]], stage: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label in CURVES:
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=label)
    ax.set(title=f"{stage}: loss per segment", xlabel="optimizer step", ylabel="cross-entropy (nats/token)",
           yscale="log")  # losses fall by orders of magnitude
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, plt, path)


def plot_metric_bars(results: dict[str, dict[str, dict[str, float]]], metrics: Sequence[str],
                     path: Path) -> None:
    """The metrics (acc, fmt, fmt_tags and score) side by side: per task (and their average), a
    bar per row label (one run, or one strategy of a comparison)."""
    plt = _pyplot()
    labels = list(results)
    columns = table_columns(results)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), sharey=True)
    width = 0.8 / len(labels)
    for ax, metric in zip(axes, metrics, strict=True):
        for index, label in enumerate(labels):
            values = [cell(results[label], column, metric) for column in columns]
            bars = ax.bar([x + index * width for x in range(len(columns))], values, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(columns))],
                      [c.removeprefix("sftkey_") for c in columns], rotation=20)
        ax.set(title=metric, ylim=(0, 1.05))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    _save(fig, plt, path)


def plot_key_loss_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Held-out key-token loss against training progress, one curve per strategy (the
    paper's Figure 3); each strategy's stages follow one another on the x axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = ("-", "--", ":", "-.")  # strategies sharing a stage draw the same curve: keep both visible
    for index, (label, points) in enumerate(curves.items()):
        if points:
            ax.plot(*zip(*points, strict=True), styles[index % len(styles)], marker=".", label=label)
    ax.set(title="held-out key-token loss", xlabel="optimizer step (stages in sequence)",
           ylabel="cross-entropy (nats/token)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, plt, path)


def table_columns(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The tasks, then `average` when there is more than one to average."""
    tasks = task_columns(results)
    return tasks + ["average"] if len(tasks) > 1 else tasks


def task_columns(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The tasks measured in any row, in first-seen order; groups (which hold `tasks`) left out."""
    seen: dict[str, None] = {}
    for metrics in results.values():
        seen.update({task: None for task, values in metrics.items() if "tasks" not in values})
    return list(seen)


def cell(metrics: dict[str, dict[str, float]], column: str, metric: str) -> float:
    """One task's figure, or for `average` the mean over the row's tasks; NaN where it was not
    measured (a metric older evaluations did not report)."""
    if column != "average":
        return metrics.get(column, {}).get(metric, float("nan"))
    values = [values.get(metric, float("nan")) for values in metrics.values() if "tasks" not in values]
    return sum(values) / len(values) if values else float("nan")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, plt: Any, path: Path) -> None:
    """Write the figure under a temporary name, then rename: never a half-written PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    renamed(tmp, path)
