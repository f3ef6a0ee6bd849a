"""One command at a time in a directory it writes: a run, an evaluation, a comparison, an export.

The process that writes holds an OS file lock on `run.lock` (filelock's `flock` on Unix) for
as long as it writes, and notes who it is in `run.lock.json`. A second process is refused at
once, before it changes anything, with the holder named. The OS releases the lock when its
process ends, however it ends, so a lock left by a killed command never blocks the next one.
A file system without `flock` is refused rather than locked with a marker file that a killed
process would leave behind (filelock's soft fallback). The processes of one torchrun job share
the directory: the main one holds the lock for all, and tells the others whether it got it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import UserError
from ..runtime.distributed import main_decides
from .files import write_json_atomic
from .layout import LOCK_NAME, OWNER_NAME, Claim, is_temporary


@contextmanager
def holding(claim: Claim) -> Iterator[None]:
    """Hold the claimed directory for the block (again, where this process already holds it).
    Every check is the main process's; a refusal reaches every process as the same error."""
    lock = None

    def take() -> None:
        nonlocal lock
        refuse_foreign(claim)
        lock = _acquire(claim)

    main_decides(take)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _acquire(claim: Claim) -> Any:
    from filelock import FileLock, Timeout

    claim.lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(claim.lock_file, timeout=0, is_singleton=True, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{claim.root}: in use by {_holder(claim)}; wait for it to end, "
                        "or choose another --output") from None
    except OSError as err:  # ENOSYS and the like: the file system has no flock
        raise UserError(f"{claim.root}: cannot be locked here ({err}); choose an --output on a local "
                        "disk") from None
    if lock.lock_counter == 1:
        write_json_atomic(claim.owner_file, _me())
    return lock


def refuse_foreign(claim: Claim) -> None:
    """A directory that holds files but not the claim's marker is never written into (nor locked).
    The lock's files and the kit's temporaries are not such files: a command killed before it
    wrote its marker leaves them, and its rerun must go on."""
    root = claim.root
    if root.exists() and not (root / claim.marker).exists() and any(
            path.name not in (LOCK_NAME, OWNER_NAME) and not is_temporary(path) for path in root.iterdir()):
        raise UserError(f"--output {root}: the directory is not empty and holds no {claim.marker}; "
                        "choose an empty or new directory")


def _me() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


def _holder(claim: Claim) -> str:
    """The holder as its note says, or plainly "another process" before it has written one."""
    try:
        owner = json.loads(claim.owner_file.read_text(encoding="utf-8"))
        return (f"process {owner['pid']} on {owner['host']} since {owner['since']} "
                f"(`{owner['command']}`)")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
