"""Split a raw response into (thinking, answer) by the recipe's segmentation rules."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_ANSWER_IS = re.compile(r"the (?:final )?answer is\b:?", re.IGNORECASE)
_GSM8K_CALC = re.compile(r"<<[^<>]*>>")

Split = tuple[str, str]


def split_gsm8k(text: str) -> Split | None:
    """`reasoning #### 42` (GSM8K); calculator annotations `<<6*7=42>>` are removed."""
    cut = text.rfind("####")
    if cut < 0:
        return None
    return _GSM8K_CALC.sub("", text[:cut]).strip(), text[cut + 4 :].strip()


def split_answer_is(text: str) -> Split | None:
    """`… The answer is 42.`: the last occurrence; a final period is not part of the answer."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    answer = text[last.end() :].strip()
    return text[: last.start()].strip(), answer.removesuffix(".").strip()


def split_boxed(text: str) -> Split | None:
    """`… \\boxed{42}`: the last box's balanced content; the whole text stays as thinking."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for pos in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[pos], 0)
        if depth < 0:
            return text.strip(), text[begin:pos].strip()
    return None


def split_last_line(text: str) -> Split | None:
    """The last non-empty line is the answer, everything above it the thinking."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        return None
    return "\n".join(lines[:-1]).strip(), lines[-1].strip()


RULES: dict[str, Callable[[str], Split | None]] = {
    "gsm8k": split_gsm8k,
    "answer_is": split_answer_is,
    "boxed": split_boxed,
    "last_line": split_last_line,
}


def split_response(text: str, rules: Sequence[str]) -> Split | None:
    """The first rule that finds a non-empty answer wins."""
    for name in rules:
        found = RULES[name](text)
        if found is not None and found[1]:
            return found
    return None
