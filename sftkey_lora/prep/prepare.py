"""The rows a run trains on: every example encoded (or read back from the cache), those too
long for `format.max_length` dropped and counted. It joins `masks` (encoding) and `cache`
(storage), which know nothing of each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data import DataReport, Example
from ..errors import UserError
from ..recipe import FormatConfig
from .cache import encoded_rows
from .masks import Encoded


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, fmt: FormatConfig, tagged: bool,
    report: DataReport, cache: bool = True,
) -> list[Encoded]:
    """Encode all examples (or read them from the cache, `cache`); those too long for
    `format.max_length` are dropped and counted, since cutting them would cut the answer
    (the key span is at the end)."""
    kept = []
    for row in encoded_rows(examples, tokenizer, fmt, tagged, cache):
        if len(row.input_ids) > fmt.max_length:
            report.drop("too_long", row.example.id or "example",
                        f"{len(row.input_ids)} tokens > format.max_length={fmt.max_length}; "
                        "the key span would be cut")
        else:
            kept.append(row)
    report.used = len(kept)
    if not kept:
        raise UserError(f"data: every example is longer than format.max_length="
                        f"{fmt.max_length}\n{report.format()}")
    return kept
