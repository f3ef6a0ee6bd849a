"""Trainer callbacks: held-out loss per segment at every logging step, and the progress.

The per-segment losses are measured on the same held-out examples in every stage and
strategy, so the curves compare (the paper's Figure 3): thinking and key loss are both
recorded whatever the stage trains on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..progress import progress
from ..rundir.crashpoints import crash_point
from ..rundir.layout import KEY_LOSS, THINKING_LOSS, RunLayout
from ..rundir.manifest import write_manifest
from .loss import segment_losses

log = logging.getLogger(__name__)


class SegmentLossProbe(TrainerCallback):
    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def measure(self, model: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        losses = segment_losses(model, self.batches)
        model.train(was_training)
        return {THINKING_LOSS: round(losses["thinking"], 5), KEY_LOSS: round(losses["key"], 5)}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and not any(KEY_LOSS in entry for entry in state.log_history):
            state.log_history.append({"step": 0, **self.measure(model)})

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        # The Trainer has just appended these logs to the history; add the probe to that entry,
        # and to the logs the callbacks after this one see (TensorBoard's).
        if logs and "loss" in logs and state.log_history:
            measured = self.measure(model)
            state.log_history[-1].update(measured)
            logs.update(measured)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        last = [entry for entry in state.log_history if KEY_LOSS in entry]
        if not last or last[-1]["step"] != state.global_step:
            state.log_history.append({"step": state.global_step, **self.measure(model)})


class StageProgress(TrainerCallback):
    """One bar per stage (off a terminal, a line now and then) with the step, ETA, training
    loss and held-out key loss; each logging step's figures in full to the log (on the
    console with --verbose)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_local_process_zero:
            self.bar = progress(self.stage, state.max_steps, "step", initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_local_process_zero and logs and "loss" in logs):
            return
        entry = state.log_history[-1]  # the probe, listed before this callback, has filled it
        log.debug(f"{self.stage} step {state.global_step}: "
                  + ", ".join(f"{key} {value:.5g}" if isinstance(value, float) else f"{key} {value}"
                              for key, value in entry.items() if key != "step"))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", key=f"{entry.get(KEY_LOSS, float('nan')):.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class AlreadyTrained(Exception):
    """Raised by `FinishedCheckpoint`: the checkpoint resumed from holds every step."""


class FinishedCheckpoint(TrainerCallback):
    """A resume from the stage's last checkpoint (a kill fell between it and the stage's
    output) must train nothing. The Trainer would train one step past `max_steps` there (its
    epoch loop checks the limit only after a step), so training is stopped once the
    checkpoint's weights, optimiser and history are loaded, before any step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise AlreadyTrained


class CheckpointManifest(TrainerCallback):
    """Once the Trainer has written a whole `checkpoint-N/`, its manifest (a resume checks the
    checkpoint against it), then the crash point `after checkpoint`. A step that saves also
    logs, so a checkpoint's history holds the loss of every step before it (`train_loss`
    after a resume is made from it)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_manifest(RunLayout(Path(args.output_dir)).checkpoint(state.global_step))
        crash_point("after checkpoint")
