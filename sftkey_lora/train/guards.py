"""What stops a stage cleanly instead of letting it waste or spoil a run: a loss that turned
NaN or inf, caught before the optimiser takes that step in, so no checkpoint ever holds it.
(A disk that fills up: `rundir/diskfull.py`.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from ..errors import UserError
from ..rundir.files import last_whole_checkpoint
from ..rundir.layout import RunLayout


class LossGuard(TrainerCallback):
    """Checks every micro-batch's loss, whoever computes it (our loss function, or the model's
    own loss through a forward hook), and names the stage and the optimiser step."""

    def __init__(self, stage: str, layout: RunLayout) -> None:
        self.stage = stage
        self.layout = layout
        self.step = 1

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = state.global_step + 1

    def check(self, loss: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(loss.detach()).all()):
            kind = "NaN" if bool(torch.isnan(loss.detach()).any()) else "infinite"
            last = last_whole_checkpoint(self.layout)
            kept = f"{last.name} is intact" if last else "no checkpoint was saved yet"
            raise UserError(
                f"{self.stage}: the loss became {kind} at step {self.step}; training stopped before that "
                f"step was applied ({kept}, in {self.layout.root}). Lower training.learning_rate (or "
                "stages.NAME.training.learning_rate), or check the data, then run again with --fresh")
        return loss

    def wrap(self, loss_func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def checked(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
            return self.check(loss_func(outputs, labels, num_items_in_batch=num_items_in_batch))

        return checked

    def watch(self, model: torch.nn.Module) -> None:
        """For a model that computes its own loss from the labels."""
        def hook(module: Any, args: Any, output: Any) -> None:
            if getattr(output, "loss", None) is not None and module.training:
                self.check(output.loss)

        model.register_forward_hook(hook)
