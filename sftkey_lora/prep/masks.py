"""Token ids, a segment per token, and the labels of each stage, from one tokenization.

The rendered text is tokenized once with offsets; each token takes the segment of its
last character, so a token straddling a boundary belongs to the later segment (a token
straddling `</Thinking>`/`<Answer>` counts as key). The end-of-sequence token is
appended by id and labelled in every stage, also when pad == eos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data import DataReport, Example
from ..errors import UserError
from ..recipe import FormatConfig
from ..strategies import LabelKind
from .render import Rendered, Segment, render

IGNORE = -100  # the label value the loss skips


@dataclass(frozen=True)
class Encoded:
    example: Example
    input_ids: list[int]
    segments: list[Segment]
    in_response: list[bool]  # tokens with loss in a `full` stage
    in_key: list[bool]  # tokens with loss in a `key` stage

    def mask(self, kind: LabelKind) -> list[bool]:
        """Which tokens carry a label in a stage of this kind."""
        return self.in_response if kind == "full" else self.in_key

    def labels(self, kind: LabelKind) -> list[int]:
        return [tok if keep else IGNORE for tok, keep in zip(self.input_ids, self.mask(kind), strict=True)]

    def count(self, segment: Segment) -> int:
        return sum(1 for s in self.segments if s == segment)


def special_prefix(tokenizer: object) -> list[int]:
    """Ids the tokenizer puts before a text by default (a BOS for Llama, none for Qwen)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]  # type: ignore[operator]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if with_special[len(with_special) - len(plain):] != plain:
        return []
    return list(with_special[: len(with_special) - len(plain)])


def encode(rendered: Rendered, tokenizer: object, prefix: Sequence[int], example: Example) -> Encoded:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError("model.name_or_path: the tokenizer has no eos token, so the model "
                        "could never learn to stop; set `eos_token` in its tokenizer_config.json")
    enc = tokenizer(rendered.text, add_special_tokens=False,  # type: ignore[operator]
                    return_offsets_mapping=True)
    ids = list(prefix) + list(enc["input_ids"]) + [eos]
    segments = [Segment.PROMPT] * len(prefix)
    in_response = [False] * len(prefix)
    in_key = [False] * len(prefix)
    last_char = len(rendered.text) - 1
    for start, end in enc["offset_mapping"]:
        last = min(end - 1 if end > start else start, last_char)
        segments.append(rendered.char_segments[last])
        in_response.append(last >= rendered.response_start)
        in_key.append(last >= rendered.key_start)
    segments.append(Segment.EOS)
    in_response.append(True)
    in_key.append(True)
    return Encoded(example, ids, segments, in_response, in_key)


def encode_examples(
    examples: Sequence[Example], tokenizer: object, fmt: FormatConfig, tagged: bool,
    report: DataReport,
) -> list[Encoded]:
    """Encode all examples; those too long for `format.max_length` are dropped and counted,
    since cutting them would cut the answer (the key span is at the end)."""
    prefix = special_prefix(tokenizer) if fmt.template == "base" else []
    out = []
    for example in examples:
        encoded = encode(render(example, fmt, tagged, tokenizer), tokenizer, prefix, example)
        if len(encoded.input_ids) > fmt.max_length:
            report.drop("too_long", example.id or "example",
                        f"{len(encoded.input_ids)} tokens > format.max_length={fmt.max_length}; "
                        "the key span would be cut")
            continue
        out.append(encoded)
    report.used = len(out)
    if not out:
        raise UserError(f"data: every example is longer than format.max_length="
                        f"{fmt.max_length}\n{report.format()}")
    return out

