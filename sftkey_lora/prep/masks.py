"""Token ids, a segment per token, and the labels of each stage, from one tokenization.

The rendered text is tokenized once with offsets; each token takes the segment of its
last character, so a token straddling a boundary belongs to the later segment (a token
straddling `</Thinking>`/`<Answer>` counts as key). The end-of-sequence token is
appended by id and labelled in every stage, also when pad == eos.

Examples are rendered and tokenized a batch at a time (the fast tokenizer spreads a batch
over the cores) and kept as compact arrays, 7 bytes a token; `prep.cache` keeps them on disk,
`prep.prepare` joins the two.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import Example
from ..errors import UserError
from ..recipe import FormatConfig
from ..strategies import LabelKind
from .render import Rendered, Segment, render

IGNORE = -100  # the label value the loss skips
BATCH = 512  # examples rendered and tokenized at once


@dataclass(frozen=True, eq=False)
class Encoded:
    example: Example
    input_ids: np.ndarray  # int32
    segments: np.ndarray  # int8, a `Segment` per token
    in_response: np.ndarray  # bool: tokens with loss in a `full` stage
    in_key: np.ndarray  # bool: tokens with loss in a `key` stage

    def mask(self, kind: LabelKind) -> np.ndarray:
        """Which tokens carry a label in a stage of this kind."""
        return self.in_response if kind == "full" else self.in_key

    def labels(self, kind: LabelKind) -> np.ndarray:
        return np.where(self.mask(kind), self.input_ids, IGNORE).astype(np.int64)

    def count(self, segment: Segment) -> int:
        return int(np.count_nonzero(self.segments == segment))


def special_prefix(tokenizer: object) -> list[int]:
    """Ids the tokenizer puts before a text by default (a BOS for Llama, none for Qwen)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]  # type: ignore[operator]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if with_special[len(with_special) - len(plain):] != plain:
        return []
    return list(with_special[: len(with_special) - len(plain)])


def eos_id(tokenizer: object) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError("model.name_or_path: the tokenizer has no eos token, so the model "
                        "could never learn to stop; set `eos_token` in its tokenizer_config.json")
    return eos


def encode(rendered: Rendered, tokenizer: Any, prefix: Sequence[int], example: Example) -> Encoded:
    """One example on its own (`encode_all` takes a batch at a time)."""
    tokens = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    return _from_tokens(rendered, tokens["input_ids"], tokens["offset_mapping"], prefix, eos_id(tokenizer),
                        example)


def _from_tokens(rendered: Rendered, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                 prefix: Sequence[int], eos: int, example: Example) -> Encoded:
    """One example from its tokenization: the prefix, the text's tokens, then eos."""
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    start, end = spans[:, 0], spans[:, 1]
    last = np.minimum(np.where(end > start, end - 1, start), len(rendered.text) - 1)
    head = np.zeros(len(prefix), bool)  # the prefix: prompt, never a label
    eos_flag = np.ones(1, bool)  # eos: labelled in every stage
    return Encoded(
        example,
        input_ids=np.array([*prefix, *ids, eos], np.int32),
        segments=np.concatenate([np.full(len(prefix), Segment.PROMPT, np.int8), rendered.segments_at(last),
                                 np.full(1, Segment.EOS, np.int8)]),
        in_response=np.concatenate([head, last >= rendered.response_start, eos_flag]),
        in_key=np.concatenate([head, last >= rendered.key_start, eos_flag]),
    )


def encode_all(examples: Sequence[Example], tokenizer: Any, fmt: FormatConfig,
               tagged: bool) -> Iterator[Encoded]:
    """Every example encoded, in order, a batch of `BATCH` at a time."""
    prefix = special_prefix(tokenizer) if fmt.template == "base" else []
    eos = eos_id(tokenizer)
    for first in range(0, len(examples), BATCH):
        chunk = examples[first:first + BATCH]
        rendered = [render(example, fmt, tagged, tokenizer) for example in chunk]
        tokens = tokenizer([r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
        yield from (_from_tokens(r, ids, offsets, prefix, eos, example) for r, ids, offsets, example in
                    zip(rendered, tokens["input_ids"], tokens["offset_mapping"], chunk, strict=True))
