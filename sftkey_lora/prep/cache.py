"""Encoded rows on disk, so a rerun, a stage resumed in a new process, `inspect`, or another
strategy with the same tokenizer and format reads them instead of encoding again.

The key hashes everything the encoding depends on: every example's text, the format (less
`max_length`, applied afterwards), whether the response is tagged, the tokenizer (its whole
backend: vocabulary, merges, added tokens, normalizer; its eos token and chat template), the
encoding's version, and the versions of the code that renders and tokenizes (this kit,
transformers and jinja2, which render chat templates, and tokenizers). An entry is written
under a unique temporary name in the cache folder and renamed into place, so no reader sees
half of one, and is read memory-mapped. An entry whose files differ from its manifest (cut
short, zeroed, garbled: `rundir/manifest.py`) is encoded again and replaced; temporaries a
killed process left are swept once they are an hour old. `$SFTKEY_LORA_CACHE` moves the folder
(default ~/.cache/sftkey-lora/prepared); `data.cache: false` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Example
from ..pinned import cache_home
from ..progress import progress
from ..recipe import FormatConfig
from ..rundir.crashpoints import renamed
from ..rundir.manifest import damaged, write_manifest
from .masks import Encoded, encode_all

log = logging.getLogger(__name__)
VERSION = 1  # bump when the encoding of a row changes
ARRAYS = ("input_ids", "segments", "in_response", "in_key")
RENDERERS = ("sftkey-lora", "transformers", "jinja2", "tokenizers")  # their versions are in the key
SWEEP_AFTER = 3600  # seconds: a temporary this old was left by a process that is gone


def cache_root() -> Path:
    found = os.environ.get("SFTKEY_LORA_CACHE")
    return Path(found) if found else cache_home() / "prepared"


def cache_key(examples: Sequence[Example], tokenizer: Any, fmt: FormatConfig, tagged: bool) -> str:
    digest = hashlib.sha256()
    setting = {"version": VERSION, "code": code_versions(), "tagged": tagged, "eos": tokenizer.eos_token_id,
               "format": fmt.model_dump(mode="json", exclude={"max_length"}),
               "chat_template": getattr(tokenizer, "chat_template", None)}
    digest.update(json.dumps(setting, sort_keys=True).encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    for example in examples:
        for text in (example.prompt, example.thinking, example.answer):
            digest.update(f"{len(text)}:{text}".encode())
    return digest.hexdigest()[:24]


@cache
def code_versions() -> dict[str, str | None]:
    """The installed versions of what renders and tokenizes a row."""
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in RENDERERS}


def encoded_rows(examples: Sequence[Example], tokenizer: Any, fmt: FormatConfig, tagged: bool,
                 use_cache: bool) -> list[Encoded]:
    """Every example encoded, in order: from the cache when it holds them, else encoded (with
    a progress bar) and, with `use_cache`, stored."""
    if not use_cache:
        return list(_progress(encode_all(examples, tokenizer, fmt, tagged), len(examples)))
    folder = cache_root() / cache_key(examples, tokenizer, fmt, tagged)
    cached = _read(folder, examples)
    if cached is not None:
        return cached
    if folder.exists():
        log.warning(f"{folder}: cached rows damaged (cut short, zeroed or garbled); encoded again")
    rows = list(_progress(encode_all(examples, tokenizer, fmt, tagged), len(examples)))
    _write(folder, rows)
    return rows


def _progress(rows: Iterable[Encoded], total: int) -> Iterator[Encoded]:
    bar = progress("encoding", total, "row", leave=False)
    for row in rows:
        yield row
        bar.update()
    bar.close()


def _read(folder: Path, examples: Sequence[Example]) -> list[Encoded] | None:
    """The entry's rows, or None where it is absent or not whole: a file that differs from the
    entry's manifest (cut, zeroed, garbled), or an array whose length disagrees with the bounds."""
    if not folder.is_dir() or damaged(folder):
        return None
    try:
        bounds = np.load(folder / "bounds.npy")
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS]
    except (OSError, ValueError, EOFError):  # EOFError: a zero-length file
        return None
    whole = (bounds.ndim == 1 and len(bounds) == len(examples) + 1 and bounds[0] == 0
             and bool(np.all(np.diff(bounds) > 0)) and all(len(array) == bounds[-1] for array in arrays))
    if not whole:
        return None
    return [Encoded(example, *(array[start:end] for array in arrays))
            for example, start, end in zip(examples, bounds[:-1], bounds[1:], strict=True)]


def _write(folder: Path, rows: Sequence[Encoded]) -> None:
    """Store the rows in place of any unreadable entry; a cache that cannot be written (full
    disk, read-only) only costs time."""
    temporary = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _sweep(folder.parent)
        temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        lengths = [len(row.input_ids) for row in rows]
        np.save(temporary / "bounds.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        for name in ARRAYS:
            np.save(temporary / f"{name}.npy", np.concatenate([getattr(row, name) for row in rows]))
        write_manifest(temporary)
        _set_aside(folder)  # an unreadable entry: a rename cannot replace a folder that has files
        renamed(temporary, folder, "cache entry")
    except OSError:
        pass  # another process stored the same entry first, or the folder cannot be written
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


def _set_aside(folder: Path) -> None:
    """Move a broken entry out of the way under a temporary name of its own, then delete it."""
    if folder.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        renamed(folder, aside / "old", "cache entry set aside")
        shutil.rmtree(aside, ignore_errors=True)


def _sweep(root: Path) -> None:
    """Delete temporaries that killed processes left, once they are SWEEP_AFTER seconds old."""
    now = time.time()
    for leftover in root.glob(".*.tmp"):
        try:
            if now - leftover.stat().st_mtime > SWEEP_AFTER:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass  # swept by another process meanwhile
