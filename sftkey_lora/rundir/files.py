"""Writing into a run directory so that a kill at any moment leaves every artifact whole or
absent: atomic files, directories renamed into place, checkpoints cut short found and removed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .crashpoints import renamed
from .layout import LOCK_NAME, OWNER_NAME, RunLayout, checkpoint_step, is_temporary, temporary
from .manifest import damaged


def json_text(data: Any) -> str:
    """How every JSON file of the kit is laid out."""
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json_text(data))


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: a reader never sees half a file."""
    tmp = temporary(path)
    tmp.write_text(text, encoding="utf-8")
    renamed(tmp, path)


def empty_temporary(final: Path, tag: str = "") -> Path:
    """The temporary folder `final` is written in before it is renamed into place, emptied of
    whatever a killed writer left there (stale shards would sit beside the new ones)."""
    tmp = temporary(final, tag)
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows (no second copy of a stage's weights; files
    here are replaced by a rename, never changed in place), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place. An earlier `final` is moved aside first and
    deleted last, so a kill at any moment leaves a whole `final` or a whole `tmp`."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        renamed(final, old, f"{final.name} set aside")
    renamed(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def empty_run_dir(layout: RunLayout) -> None:
    """Everything of an earlier run gone (`--fresh`), the lock of the run now starting kept."""
    for path in layout.root.iterdir():
        if path.name in (LOCK_NAME, OWNER_NAME):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_temporaries(root: Path) -> None:
    """Everything written under a temporary name and not yet renamed into place."""
    for tmp in filter(is_temporary, root.iterdir()):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def is_whole(checkpoint: Path) -> bool:
    """The Trainer writes `trainer_state.json` last: a checkpoint without a readable one was
    cut short (killed, disk full) while it was being saved. Its manifest, written after it,
    finds a file damaged since."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("global_step") == checkpoint_step(checkpoint) and not damaged(checkpoint)


def remove_partial_checkpoints(layout: RunLayout) -> list[str]:
    """Delete checkpoints that were cut short, so that a resume takes the last whole one."""
    partial = [path for path in layout.checkpoints() if not is_whole(path)]
    for path in partial:
        shutil.rmtree(path)
    return [path.name for path in partial]


def last_whole_checkpoint(layout: RunLayout) -> Path | None:
    whole = [path for path in layout.checkpoints() if is_whole(path)]
    return whole[-1] if whole else None


def remove_checkpoints(layout: RunLayout) -> None:
    """Delete the Trainer's `checkpoint-N/` folders, once their stage is complete."""
    for path in layout.checkpoints():
        shutil.rmtree(path)
