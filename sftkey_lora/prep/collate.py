"""Batches for the Trainer: right-padded ids, attention mask and the stage's labels; or,
padding-free, the examples of a batch packed into one row with position ids restarting at
each example (transformers then keeps attention inside each example)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..strategies import LabelKind
from .masks import IGNORE, Encoded
from .render import Segment


@dataclass(frozen=True)
class Collator:
    pad_id: int
    labels: LabelKind
    # Per-token segment flags for the loss curves; the Trainer's batches leave them out,
    # since the model's forward would receive them.
    with_segments: bool = False
    # Ask the model for its final hidden states and no logits at all: the loss projects the
    # labelled positions itself (`loss.LabelledLogitsLoss`).
    hidden_only: bool = False
    # One row of all the batch's examples, no padding: `position_ids` restart at every example
    # and there is no attention mask, from which transformers builds a mask that keeps each
    # example's attention to itself (with the KV cache off, which the batch says itself).
    packed: bool = False

    def __post_init__(self) -> None:
        if self.packed and self.with_segments:
            raise ValueError("segment flags are made for padded batches only")

    def __call__(self, rows: Sequence[Encoded]) -> dict[str, Any]:
        if self.packed:
            from transformers import DataCollatorWithFlattening

            # The first token of every example is prompt, never a label: nothing is lost to the
            # separator the flattening collator puts there.
            batch = DataCollatorWithFlattening(separator_id=IGNORE)(
                [{"input_ids": row.input_ids.tolist(), "labels": row.labels(self.labels).tolist()}
                 for row in rows])
            # transformers finds the examples from the position ids only when it builds no KV
            # cache: a config with `use_cache: true` would let each example attend to those before.
            batch["use_cache"] = False
        else:
            width = max(len(row.input_ids) for row in rows)
            batch = {
                "input_ids": _padded([row.input_ids for row in rows], width, self.pad_id),
                "attention_mask": _padded([np.ones(len(row.input_ids), np.int64) for row in rows], width, 0),
                "labels": _padded([row.labels(self.labels) for row in rows], width, IGNORE),
            }
        if self.with_segments:
            thinking = [row.segments == Segment.THINKING for row in rows]
            batch["is_thinking"] = _padded(thinking, width, False)
            batch["is_key"] = _padded([row.in_key for row in rows], width, False)
        if self.hidden_only:
            batch["output_hidden_states"] = True
            batch["logits_to_keep"] = torch.empty(0, dtype=torch.long)  # [0]: no position projected
        return batch


def _padded(rows: Sequence[np.ndarray], width: int, fill: int | bool) -> torch.Tensor:
    """Rows of one dtype (ids and labels int64, flags bool), right-padded to `width`."""
    dtype = np.bool_ if isinstance(fill, bool) else np.int64
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return torch.from_numpy(out)


def pad_id(tokenizer: object) -> int:
    """The pad id, else the eos id: padding is masked by the attention mask and labels, never
    by id, so pad == eos cannot mask the real end-of-sequence token."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else tokenizer.eos_token_id  # type: ignore[attr-defined]


def batches(rows: Sequence[Encoded], size: int, collator: Collator) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(rows), size):
        yield collator(rows[start:start + size])
