"""Encoded rows on disk, so a rerun, a stage resumed in a new process, `inspect`, or another
strategy with the same tokenizer and format reads them instead of encoding again.

The key hashes everything the encoding depends on: every example's text, the format (less
`max_length`, applied afterwards), whether the response is tagged, the tokenizer (its whole
backend: vocabulary, merges, added tokens, normalizer; its eos token and chat template) and
the encoding's version. An entry is written under a temporary name and renamed into place,
so no reader sees half of one, and is read memory-mapped. `$SFTKEY_LORA_CACHE` moves the
folder (default ~/.cache/sftkey-lora/prepared); `data.cache: false` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Example
from ..output import bars_disabled
from ..recipe import FormatConfig
from .masks import Encoded, encode_all

VERSION = 1  # bump when the encoding of a row changes
ARRAYS = ("input_ids", "segments", "in_response", "in_key")


def cache_root() -> Path:
    found = os.environ.get("SFTKEY_LORA_CACHE")
    return Path(found) if found else Path.home() / ".cache" / "sftkey-lora" / "prepared"


def cache_key(examples: Sequence[Example], tokenizer: Any, fmt: FormatConfig, tagged: bool) -> str:
    digest = hashlib.sha256()
    setting = {"version": VERSION, "tagged": tagged, "eos": tokenizer.eos_token_id,
               "format": fmt.model_dump(mode="json", exclude={"max_length"}),
               "chat_template": getattr(tokenizer, "chat_template", None)}
    digest.update(json.dumps(setting, sort_keys=True).encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    for example in examples:
        for text in (example.prompt, example.thinking, example.answer):
            digest.update(f"{len(text)}:{text}".encode())
    return digest.hexdigest()[:24]


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
    rows = list(_progress(encode_all(examples, tokenizer, fmt, tagged), len(examples)))
    _write(folder, rows)
    return rows


def _progress(rows: Iterable[Encoded], total: int) -> Iterable[Encoded]:
    from tqdm.auto import tqdm

    return tqdm(rows, total=total, desc="encoding", unit="row", file=sys.stderr,
                disable=bars_disabled() or None,  # None: drawn only on a terminal
                dynamic_ncols=True, leave=False)


def _read(folder: Path, examples: Sequence[Example]) -> list[Encoded] | None:
    try:
        bounds = np.load(folder / "bounds.npy")
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS]
    except (OSError, ValueError):
        return None  # absent, or not readable: encode again
    if len(bounds) != len(examples) + 1 or any(len(array) != bounds[-1] for array in arrays):
        return None
    return [Encoded(example, *(array[start:end] for array in arrays))
            for example, start, end in zip(examples, bounds[:-1], bounds[1:], strict=True)]


def _write(folder: Path, rows: Sequence[Encoded]) -> None:
    """Store the rows; a cache that cannot be written (full disk, read-only) only costs time."""
    temporary = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        temporary.mkdir(parents=True, exist_ok=True)
        lengths = [len(row.input_ids) for row in rows]
        np.save(temporary / "bounds.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        for name in ARRAYS:
            np.save(temporary / f"{name}.npy", np.concatenate([getattr(row, name) for row in rows]))
        os.replace(temporary, folder)
    except OSError:
        pass  # another process stored the same entry first, or the folder cannot be written
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
