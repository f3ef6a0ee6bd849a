"""Render an example to text, keeping the character span of every segment.

Masks are later derived from these spans and the tokenizer's offsets, never by
searching for tag token ids: a string tokenizes differently in context.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate

import numpy as np

from ..data import Example
from ..errors import UserError
from ..recipe import FormatConfig


class Segment(IntEnum):
    PROMPT = 0
    THINKING = 1
    ANSWER = 2
    TAG = 3
    EOS = 4


@dataclass(frozen=True)
class Rendered:
    text: str
    # The segments in order, each with the end (exclusive) of its characters in `text`.
    pieces: tuple[tuple[int, Segment], ...]
    response_start: int  # first character of the response (stage `full` loss)
    key_start: int  # first character after the thinking close tag (stage `key` loss, Eq. 4)

    def segments_at(self, chars: np.ndarray) -> np.ndarray:
        """The segment (int8) of each character index in `chars`."""
        ends = np.fromiter((end for end, _ in self.pieces), dtype=np.int64, count=len(self.pieces))
        kinds = np.fromiter((segment for _, segment in self.pieces), dtype=np.int8, count=len(self.pieces))
        return kinds[np.searchsorted(ends, chars, side="right")]


def render_prompt(prompt: str, fmt: FormatConfig, tokenizer: object | None = None) -> str:
    """The text before the response, as used in training and in evaluation."""
    if fmt.template == "chat":
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise UserError("format.template: chat, but the tokenizer has no chat template; "
                            "use format.template: base")
        messages = [{"role": "user", "content": prompt}]
        if fmt.system_prompt:
            messages.insert(0, {"role": "system", "content": fmt.system_prompt})
        return tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages, add_generation_prompt=True, tokenize=False
        )
    head = f"{fmt.system_prompt}\n" if fmt.system_prompt else ""
    # The response starts on its own line so no token can join prompt and response text.
    return f"{head}User: {prompt}\nAssistant:\n"


def render(
    example: Example, fmt: FormatConfig, tagged: bool, tokenizer: object | None = None
) -> Rendered:
    """Prompt + response; tagged is the paper's `<Thinking>…</Thinking><Answer>…</Answer>`
    with the recipe's tag strings."""
    prompt = render_prompt(example.prompt, fmt, tokenizer)
    if tagged:
        tags = fmt.tag_strings
        pieces = [
            (prompt, Segment.PROMPT), (tags.think_open, Segment.TAG),
            (example.thinking, Segment.THINKING), (tags.think_close, Segment.TAG),
            (tags.answer_open, Segment.TAG), (example.answer, Segment.ANSWER),
            (tags.answer_close, Segment.TAG),
        ]
        key_piece = 4
    else:
        pieces = [
            (prompt, Segment.PROMPT), (example.thinking, Segment.THINKING),
            (fmt.untagged_separator, Segment.TAG), (example.answer, Segment.ANSWER),
        ]
        key_piece = 2
    text = "".join(piece for piece, _ in pieces)
    ends = list(accumulate(len(piece) for piece, _ in pieces))
    spans = tuple((end, segment) for end, (piece, segment) in zip(ends, pieces, strict=True) if piece)
    return Rendered(text, spans, response_start=len(prompt), key_start=ends[key_piece - 1])
