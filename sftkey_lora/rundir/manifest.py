"""Each finished folder's files as they were written (size and SHA-256), so that a file cut short,
zeroed or garbled since is found before anything is computed from it.

A folder's manifest is written last, before the folder is renamed into place (a stage's output,
the merge, the samples, a cache entry, an export) or once the Trainer has finished a checkpoint.
A folder written before manifests existed has none and is taken as it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import UserError

MANIFEST = "sftkey_manifest.json"


CHUNK = 1 << 22


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record every file under `folder` (sub-folders too), the manifest itself left out."""
    files = {str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": file_digest(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(files, indent=1) + "\n", encoding="utf-8")


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST).exists()


def damaged(folder: Path) -> list[str]:
    """The files of `folder` that are missing or differ from its manifest (the manifest's own
    name where it cannot be read); none for a whole folder, or one without a manifest (also
    none at all: the callers say whether the folder must exist)."""
    if not has_manifest(folder):
        return []
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        recorded = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return [MANIFEST]
    found = []
    for name, (size, digest) in recorded.items():
        path = folder / name
        try:
            if path.stat().st_size != size or file_digest(path) != digest:
                found.append(name)
        except OSError:
            found.append(name)
    return found


def refuse_damaged_export(folder: Path, name: str | None = None) -> None:
    """A model directory with a manifest (an export) is loaded only as it was written: all of
    it, or with `name` that one file (a GGUF of it)."""
    broken = [found for found in damaged(folder) if name in (None, found)]
    if broken:
        raise UserError(f"{folder / broken[0]}: changed since it was written; export the run again")
