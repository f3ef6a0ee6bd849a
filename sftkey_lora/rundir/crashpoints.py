"""Named points at which a process can be made to kill itself, to prove that a kill at any
instant loses nothing (`python -m tests.crash_harness`).

Every rename that puts a finished file or folder into place passes `renamed`, which names a
point just before and just after it (`before run.json`, `after stage1`, `after cache entry`).
With `SFTKEY_LORA_CRASH_AT=NAME` the process sends itself SIGKILL the first time it reaches
NAME, or the Nth time with `NAME#N`; with `SFTKEY_LORA_CRASH_LOG=FILE` it appends the name of
every point it passes, in order, which is how the harness learns the points of a run. Neither
variable set (any ordinary use), a point costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

CRASH_AT, CRASH_LOG = "SFTKEY_LORA_CRASH_AT", "SFTKEY_LORA_CRASH_LOG"
_passed: Counter[str] = Counter()


def renamed(source: Path, target: Path, label: str | None = None) -> None:
    """`os.replace(source, target)` between the points `before LABEL` and `after LABEL`
    (LABEL: the target's name unless given, for names that differ run to run)."""
    name = label or target.name
    crash_point(f"before {name}")
    os.replace(source, target)
    crash_point(f"after {name}")


def crash_point(name: str) -> None:
    """Log the point, and die here if this passage is the one asked for."""
    wanted, log = os.environ.get(CRASH_AT), os.environ.get(CRASH_LOG)
    if not wanted and not log:
        return
    _passed[name] += 1
    passage = f"{name}#{_passed[name]}"
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(passage + "\n")
    if wanted and (wanted == passage or (wanted == name and _passed[name] == 1)):
        os.kill(os.getpid(), signal.SIGKILL)
