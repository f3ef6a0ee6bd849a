"""What stops a stage cleanly instead of letting it waste or spoil a run: a loss that turned
NaN or inf (caught before the optimiser takes that step in, so no checkpoint ever holds it),
and a disk that filled up while something was being saved."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..errors import UserError
from ..rundir.files import last_whole_checkpoint, remove_partial_checkpoints, remove_temporaries
from ..rundir.layout import RunLayout

LOW_SPACE = 16 * 2**20  # bytes left after a failed write that say the disk is full


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


def is_disk_full(err: BaseException, where: Path) -> bool:
    """ENOSPC comes as an OSError, as safetensors' error text, or from torch's writer only as a
    short write; so a failed write with (almost) no space left also counts."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(err):
        return True
    try:
        return shutil.disk_usage(where).free < LOW_SPACE
    except OSError:
        return False


@contextmanager
def disk_full_stops(stage: str, layout: RunLayout) -> Iterator[None]:
    """A disk that fills while `stage` saves becomes one message; what was cut short is removed
    (a partial checkpoint, a half-written artifact), so what was saved before stays usable."""
    try:
        yield
    except UserError:
        raise  # already one message (a diverging loss, say), whatever the disk holds
    except Exception as err:  # safetensors' own error type carries ENOSPC only in its text
        if not is_disk_full(err, layout.root):
            raise
        remove_partial_checkpoints(layout)
        remove_temporaries(layout.root)
        last = last_whole_checkpoint(layout)
        kept = f"{last.name} and every finished step are intact" if last else "every finished step is intact"
        raise UserError(f"{stage}: the disk holding {layout.root} is full ({err}); {kept}. Free some space "
                        "and run the same command again to resume") from None
