"""What each step of a run records in `run.json` once it is complete, typed, and the summary
table made of them. A step's entry is its status and start time plus these fields, flat."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..strategies import STAGE_NAMES
from .layout import EVAL_STEP, KEY_LOSS, MERGE_STEP


class _Outcome(BaseModel):
    # A record also holds `status` and `started`, and may hold keys of a later version.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Change(_Outcome):
    before: float
    after: float


class StageOutcome(_Outcome):
    labels: str  # `full` or `key`
    logits: str  # where the loss projected to the vocabulary (`labelled positions`, ...)
    steps: int
    resumed_from: str | None
    seconds: float  # wall time, loading and saving included
    train_seconds: float
    tokens: int  # non-padding tokens trained on in this process's run of the stage
    tokens_per_second: float
    peak_memory_mb: float
    memory_kind: str
    train_loss: float
    heldout_key_loss: Change
    heldout_thinking_loss: Change
    log_history: list[dict[str, Any]]  # the Trainer's logs, with the held-out losses
    # The stage of another run this one is (a comparison trains sftkey_tag's stage 1 once, as
    # sft_tag); its figures are that training's.
    shared_from: str | None = None

    def key_loss_curve(self) -> list[tuple[int, float]]:
        return [(entry["step"], entry[KEY_LOSS]) for entry in self.log_history if KEY_LOSS in entry]


class MergeOutcome(_Outcome):
    seconds: float
    kl: dict[str, float]  # per candidate base: mean per-token KL(stage-1 model ‖ re-quantized merge)
    base: str  # the candidate used
    chosen_by: str
    # Per candidate: the re-quantized merge's held-out thinking and key losses, where stage 2
    # would start from it (stage 1 ended at its own `heldout_*_loss.after`, on the same examples).
    heldout: dict[str, dict[str, float]] = {}
    peak_memory_mb: float | None = None  # as a stage's; None in runs recorded before it was
    memory_kind: str | None = None


class EvalOutcome(_Outcome):
    tasks: list[str]
    limit: int | None
    eval: dict[str, Any]  # the recipe's `eval` section it ran with
    seconds: float
    metrics: dict[str, dict[str, Any]]  # as metrics.json


Outcome = StageOutcome | MergeOutcome | EvalOutcome
OUTCOMES: dict[str, type[Outcome]] = {**{name: StageOutcome for name in STAGE_NAMES},
                                      MERGE_STEP: MergeOutcome, EVAL_STEP: EvalOutcome}


def summary_table(steps: dict[str, dict[str, Any]]) -> str:
    """Per training step recorded: status, wall time, tokens/s, peak memory, held-out key loss."""
    rows = [("step", "status", "time", "tokens/s", "peak memory", "held-out key loss")]
    for name, entry in steps.items():
        if name == EVAL_STEP:
            continue
        status = entry.get("status", "pending")
        if status != "complete":
            rows.append((name, status, "", "", "", ""))
            continue
        outcome = OUTCOMES[name].model_validate(entry)
        if isinstance(outcome, MergeOutcome):
            kl = ", ".join(f"{base} {value:.3g}" for base, value in outcome.kl.items())
            rows.append((name, status, f"{outcome.seconds:.0f} s", "", "", f"KL {kl} -> {outcome.base}"))
        elif isinstance(outcome, StageOutcome):
            key = outcome.heldout_key_loss
            rows.append((name, status, f"{outcome.seconds:.0f} s", f"{outcome.tokens_per_second:,.0f}",
                         f"{outcome.peak_memory_mb:,.0f} MB", f"{key.before:.3f} -> {key.after:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
