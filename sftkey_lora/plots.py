"""Loss curves as PNG: training loss and held-out thinking / key loss per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .callbacks import KEY_KEY, THINKING_KEY

CURVES = (("loss", "training loss (stage labels)"), (THINKING_KEY, "held-out thinking tokens"),
          (KEY_KEY, "held-out key tokens"))


def plot_stage_losses(history: list[dict[str, Any]], stage: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label in CURVES:
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=label)
    ax.set(title=f"{stage}: loss per segment", xlabel="optimizer step", ylabel="cross-entropy (nats/token)",
           yscale="log")  # losses fall by orders of magnitude
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
