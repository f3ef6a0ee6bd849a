"""One run at a time in a run directory.

The process that writes a run holds an OS file lock on `run.lock` (filelock's `flock` on
Unix) for as long as it writes, and notes who it is in `run.lock.json`. A second process
is refused at once, before it changes anything, with the holder named. The OS releases the
lock when its process ends, however it ends, so a lock left by a killed run never blocks
the next one. The processes of one torchrun job share the run: the main one holds the lock
for all, and tells the others whether it got it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import UserError
from ..train.distributed import from_main, is_main
from .files import write_json_atomic
from .layout import LOCK_NAME, OWNER_NAME, RunLayout


@contextmanager
def holding(layout: RunLayout) -> Iterator[None]:
    """Hold the run directory for the block (again, where this process already holds it)."""
    from filelock import FileLock, Timeout

    lock, refusal = None, None
    if is_main():
        refuse_foreign(layout)
        layout.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(layout.lock_file, timeout=0, is_singleton=True)
        try:
            lock.acquire()
        except Timeout:
            lock, refusal = None, (f"{layout.root}: in use by {_holder(layout)}; wait for it to end, "
                                   "or choose another --output")
        else:
            if lock.lock_counter == 1:
                write_json_atomic(layout.owner_file, _me())
    refusal = from_main(refusal)
    if refusal:
        raise UserError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def refuse_foreign(layout: RunLayout) -> None:
    """A directory that holds files and no run is never written into (nor locked)."""
    root, file = layout.root, layout.run_file
    if root.exists() and not file.exists() and any(
            path.name not in (LOCK_NAME, OWNER_NAME) for path in root.iterdir()):
        raise UserError(f"--output {root}: the directory is not empty and holds no {file.name}; "
                        "choose an empty or new directory")


def _me() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


def _holder(layout: RunLayout) -> str:
    """The holder as its note says, or plainly "another process" before it has written one."""
    try:
        owner = json.loads(layout.owner_file.read_text(encoding="utf-8"))
        return (f"process {owner['pid']} on {owner['host']} since {owner['since']} "
                f"(`{owner['command']}`)")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
