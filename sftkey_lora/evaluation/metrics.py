"""Format check and answer grading of one generated response (paper Appendix D and §5).

`fmt` asks whether the output follows the format its model was trained to produce, as the
paper judges each model (its SFT baseline has fmt 0.998 on GSM8K, Table 7):
  - tagged strategies: `fmt_tags`, strict: the whole output (surrounding whitespace aside) is
    exactly `<Thinking>…</Thinking><Answer>…</Answer>`, both parts non-empty and free of tags
    (with the run's tag strings, `format.tag_strings`: the paper's unless the recipe names others);
  - `sft` (untagged): non-empty reasoning, the separator (`format.untagged_separator`), a
    non-empty one-line answer, nothing after, no tag anywhere.
`fmt_tags` is always reported too.
`acc` is lenient, so a response with a broken format can still be right, as with the
paper's judge. The answer is read from, in order:
  1. the last answer open tag up to its close tag (or to the end when it is not closed);
  2. else, for an untagged model, the text after the last separator;
  3. else the text after the last thinking close tag;
  4. else the whole output;
and when 2, 3 or 4 applies it is narrowed to the last number or `\\boxed{}` (math) or the
last option letter (multiple choice). Equality: math-verify for math, the option letter
for multiple choice, normalised text (case, punctuation, articles, spaces) otherwise.
"""

from __future__ import annotations

import functools
import re
import string
import threading
from dataclasses import dataclass

from ..data.example import AnswerKind
from ..tags import PAPER_TAGS, Tags

METRICS = ("acc", "fmt", "fmt_tags", "score")  # what every sftkey_* task reports

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = "\\boxed"
_ARTICLES = re.compile(r"\b(a|an|the)\b")


@dataclass(frozen=True)
class Grade:
    acc: bool
    fmt: bool  # the format the model was trained to produce
    fmt_tags: bool  # the strict tag format, whatever the model was trained on
    extracted: str  # the answer as read from the output, after narrowing


def score(acc: float, fmt: float, alpha: float) -> float:
    """The paper's composite: alpha·acc + (1 − alpha)·fmt (alpha is `eval.alpha`, 0.7)."""
    return alpha * acc + (1 - alpha) * fmt


@functools.lru_cache(maxsize=8)
def _format_of(tags: Tags) -> re.Pattern[str]:
    return re.compile(
        rf"\s*{re.escape(tags.think_open)}(?P<thinking>.*?){re.escape(tags.think_close)}"
        rf"{re.escape(tags.answer_open)}(?P<answer>.*?){re.escape(tags.answer_close)}\s*",
        re.DOTALL,
    )


def follows_format(output: str, tags: Tags = PAPER_TAGS) -> bool:
    """Exactly one thinking part then one answer part, nothing else, nothing nested."""
    found = _format_of(tags).fullmatch(output)
    if found is None:
        return False
    parts = (found["thinking"], found["answer"])
    return all(part.strip() for part in parts) and not any(tag in part for part in parts for tag in tags.all)


def follows_untagged(output: str, separator: str, tags: Tags = PAPER_TAGS) -> bool:
    """The untagged layout `sft` trains: reasoning, the separator once, a one-line answer."""
    if output.count(separator) != 1 or any(tag in output for tag in tags.all):
        return False
    reasoning, answer = output.split(separator)
    return bool(reasoning.strip()) and bool(answer.strip()) and "\n" not in answer.strip()


def answer_part(output: str, tags: Tags = PAPER_TAGS, separator: str | None = None) -> tuple[str, bool]:
    """(the text the response offers as its answer, whether it came from answer tags)."""
    start = output.rfind(tags.answer_open)
    if start >= 0:
        body = output[start + len(tags.answer_open):]
        end = body.find(tags.answer_close)
        return (body if end < 0 else body[:end]).strip(), True
    if separator and separator in output:
        return output[output.rfind(separator) + len(separator):].strip(), False
    think_end = output.rfind(tags.think_close)
    rest = output[think_end + len(tags.think_close):] if think_end >= 0 else output
    return rest.strip(), False


def grade(output: str, reference: str, kind: AnswerKind, labels: tuple[str, ...] = (),
          tags: Tags = PAPER_TAGS, separator: str | None = None) -> Grade:
    """Grade one response against its reference answer; `separator`: the model was trained
    untagged, with this separator before its answer."""
    text, tagged = answer_part(output, tags, separator)
    if kind == "math":
        extracted = text if tagged else _last_math(text)
        correct = math_equal(reference, extracted)
    elif kind == "choice":
        extracted = choice_letter(text, labels or tuple("ABCDE"), anywhere=not tagged)
        correct = extracted != "" and extracted == reference.strip().upper()
    else:
        extracted = text
        correct = normalize_text(extracted) == normalize_text(reference) != ""
    in_tags = follows_format(output, tags)
    own = in_tags if separator is None else follows_untagged(output, separator, tags)
    return Grade(acc=correct, fmt=own, fmt_tags=in_tags, extracted=extracted)


def math_equal(reference: str, answer: str) -> bool:
    """math-verify equality (gold first: `verify` is asymmetric); plain numbers and LaTeX
    alike, so `1,000` equals `1000` and `\\frac{1}{2}` equals `0.5`. A reference math-verify
    cannot read is compared as normalised text."""
    from math_verify import parse, verify

    if not answer.strip():
        return False
    # math-verify times out through signals, which only the main thread may use.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(reference, parsing_timeout=timeout)
    if not gold:
        return normalize_text(reference) == normalize_text(answer)
    return bool(verify(gold, parse(answer, parsing_timeout=timeout), timeout_seconds=timeout))


def _last_math(text: str) -> str:
    """Outside the tags: the last `\\boxed{…}` if any (math-verify reads it), else the last number."""
    boxed = text.rfind(_BOXED)
    if boxed >= 0:
        return text[boxed:]
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else ""


def choice_letter(text: str, labels: tuple[str, ...], anywhere: bool) -> str:
    """The option letter a text names: `B`, `(B)`, `B.`, `B) text` or `the answer is B`; with
    `anywhere`, else the last letter standing alone. Empty when none is named."""
    letters = "".join(re.escape(label) for label in labels)
    # A bare letter must end the text or be followed by `.`, `)`, `:` or `,`: "A plant" is no option.
    head = re.match(rf"\s*(?:\(([{letters}])\)|([{letters}])(?:[.):,]|\s*$))", text)
    if head:
        return head[1] or head[2]
    stated = re.findall(rf"answer is:?\s*\(?([{letters}])\b", text, flags=re.IGNORECASE)
    if stated:
        return stated[-1].upper()
    if anywhere:
        alone = re.findall(rf"\(([{letters}])\)|\b([{letters}])\b", text)
        if alone:
            return "".join(alone[-1])
    return ""


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())
