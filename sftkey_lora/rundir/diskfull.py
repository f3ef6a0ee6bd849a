"""A disk that fills up while a command writes becomes one message (exit 2) instead of a
traceback, and what was cut short is removed, so what was whole before stays whole and the same
command, run again once there is space, carries on from there."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .files import last_whole_checkpoint, remove_partial_checkpoints, remove_temporaries
from .layout import RunLayout

LOW_SPACE = 16 * 2**20  # bytes left after a failed write that say the disk is full


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
def disk_full_stops(what: str, root: Path, temporaries: Sequence[Path] = ()) -> Iterator[None]:
    """A disk that fills while `what` writes into `root` becomes one message; what was cut short
    is removed (a partial checkpoint, a temporary in `root`, the `temporaries` beside it)."""
    try:
        yield
    except UserError:
        raise  # already one message (a diverging loss, a stage's own full disk), whatever the disk holds
    except Exception as err:  # safetensors' own error type carries ENOSPC only in its text
        if not is_disk_full(err, root if root.exists() else root.parent):
            raise
        layout = RunLayout(root)
        if root.is_dir():
            remove_partial_checkpoints(layout)
            remove_temporaries(root)
        for path in temporaries:
            shutil.rmtree(path, ignore_errors=True)
        last = last_whole_checkpoint(layout) if root.is_dir() else None
        kept = f"{last.name} and every finished step are intact" if last else "what was finished is intact"
        raise UserError(f"{what}: the disk holding {root} is full ({err}); {kept}. Free some space "
                        "and run the same command again") from None
