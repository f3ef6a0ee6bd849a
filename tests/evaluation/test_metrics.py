"""Metric functions of the sftkey_* tasks on hand-made outputs."""

from __future__ import annotations

import pytest

from sftkey_lora.data import Example
from sftkey_lora.evaluation.metrics import (
    answer_part,
    follows_format,
    follows_untagged,
    grade,
    normalize_text,
)
from sftkey_lora.evaluation.tasks import answer_kind, process_results
from sftkey_lora.recipe import FormatConfig
from sftkey_lora.tags import PAPER_TAGS
from tests.support import think_tags

WELL_FORMED = "<Thinking>3 + 4 = 7.</Thinking><Answer>7</Answer>"


@pytest.mark.parametrize("output, expected", [
    (WELL_FORMED, True),
    ("  " + WELL_FORMED + "\n", True),  # surrounding whitespace aside
    ("<Thinking>3 + 4 = 7.</Thinking><Answer>7", False),  # missing closing tag
    ("<Thinking>3 + 4 = 7.<Answer>7</Answer>", False),  # missing </Thinking>
    (WELL_FORMED + " So 7.", False),  # text after </Answer>
    ("Sure! " + WELL_FORMED, False),  # text before <Thinking>
    ("<Thinking>a<Thinking>b</Thinking></Thinking><Answer>7</Answer>", False),  # nested
    ("<Thinking>a</Thinking><Thinking>b</Thinking><Answer>7</Answer>", False),  # repeated thinking
    (WELL_FORMED + "<Answer>8</Answer>", False),  # repeated answer
    ("<Thinking>a</Thinking> <Answer>7</Answer>", False),  # the paper's tags touch
    ("<Thinking></Thinking><Answer>7</Answer>", False),  # empty thinking
    ("<Thinking>a</Thinking><Answer> </Answer>", False),  # empty answer
    ("<Answer>7</Answer><Thinking>a</Thinking>", False),  # wrong order
    ("7", False),
])
def test_format(output: str, expected: bool) -> None:
    assert follows_format(output) is expected


@pytest.mark.parametrize("output, reference, correct", [
    (WELL_FORMED, "7", True),
    ("<Thinking>x</Thinking><Answer>1,000</Answer>", "1000", True),
    ("<Thinking>x</Thinking><Answer>1000</Answer>", "1,000", True),
    ("<Thinking>x</Thinking><Answer>\\frac{1}{2}</Answer>", "0.5", True),
    ("<Thinking>x</Thinking><Answer>0.5</Answer>", "\\frac{1}{2}", True),
    ("<Thinking>x</Thinking><Answer>$\\frac{2}{4}$</Answer>", "\\frac{1}{2}", True),
    ("<Thinking>x</Thinking><Answer>72 clips</Answer>", "72", True),
    ("<Thinking>x</Thinking><Answer>0.51</Answer>", "0.5", False),
    ("<Thinking>x</Thinking><Answer>8</Answer>", "7", False),
    ("<Thinking>x</Thinking><Answer></Answer>", "7", False),
    # Broken format, right answer: still accurate (as with the paper's judge).
    ("<Thinking>3 + 4 = 7.</Thinking><Answer>7", "7", True),
    ("<Thinking>3 + 4 = 7.</Thinking><Answer>7</Answer> and then 9", "7", True),
    ("<Thinking>1 + 1 = 2, then 3 + 4 = 7.</Thinking> 7", "7", True),
    ("He has 3, then 3 + 4 = 7 coins.", "7", True),  # no tags at all: the last number
    ("He has 7 coins, then gives 1 away: 6.", "7", False),
    ("<Thinking>x</Thinking> so \\boxed{\\frac{1}{2}} is it", "0.5", True),
    ("<Thinking>x</Thinking><Answer>7</Answer><Answer>8</Answer>", "8", True),  # the last <Answer> counts
])
def test_math_accuracy(output: str, reference: str, correct: bool) -> None:
    assert grade(output, reference, "math").acc is correct


@pytest.mark.parametrize("output, reference, correct", [
    ("<Thinking>x</Thinking><Answer>B</Answer>", "B", True),
    ("<Thinking>x</Thinking><Answer>(B)</Answer>", "B", True),
    ("<Thinking>x</Thinking><Answer>B. flowers wilting</Answer>", "B", True),
    ("<Thinking>x</Thinking><Answer>The answer is (C).</Answer>", "C", True),
    ("<Thinking>x</Thinking><Answer>(B)</Answer>", "C", False),
    ("<Thinking>x</Thinking><Answer>A plant</Answer>", "A", False),  # an article, not an option
    ("<Thinking>x</Thinking><Answer>E</Answer>", "E", False),  # not one of this question's options
    ("Flowers need the sun, so (D)", "D", True),  # no tags: the last option letter
    ("I cannot tell.", "A", False),
])
def test_choice_accuracy(output: str, reference: str, correct: bool) -> None:
    assert grade(output, reference, "choice", ("A", "B", "C", "D")).acc is correct


@pytest.mark.parametrize("output, reference, correct", [
    ("<Thinking>x</Thinking><Answer>Yes.</Answer>", "yes", True),
    ("<Thinking>x</Thinking><Answer>The  Eiffel Tower</Answer>", "eiffel tower", True),
    ("<Thinking>x</Thinking><Answer>no</Answer>", "yes", False),
    ("<Thinking>x</Thinking> positive", "positive", True),
    ("<Thinking>x</Thinking><Answer>...</Answer>", "!", False),  # nothing left to compare
])
def test_text_accuracy(output: str, reference: str, correct: bool) -> None:
    assert grade(output, reference, "text").acc is correct


def test_answer_part_prefers_tags_then_text_after_thinking() -> None:
    assert answer_part("<Thinking>a</Thinking><Answer> 7 </Answer>") == ("7", True)
    assert answer_part("<Thinking>a</Thinking> 7") == ("7", False)
    assert answer_part("just 7") == ("just 7", False)
    assert normalize_text("  The Answer, is: A cat! ") == "answer is cat"


def test_format_and_answer_in_model_native_tags() -> None:
    tags = think_tags()
    output = "<think>3 + 4 = 7.</think><answer>7</answer>"
    assert follows_format(output, tags) and not follows_format(output)
    assert answer_part(output, tags) == ("7", True)
    assert grade(output, "7", "math", tags=tags) == grade(output.replace("<think>", "<Thinking>")
        .replace("</think>", "</Thinking>").replace("answer>", "Answer>"), "7", "math")
    # Paper tags inside a think-tagged output are text, not structure.
    assert follows_format("<think>a</think><answer><Answer>7</Answer></answer>", tags) is not False


@pytest.mark.parametrize("alpha", [0.7, 0.5, 1.0])
def test_score_weighs_accuracy_by_alpha(alpha: float) -> None:
    doc = {"reference": "7", "kind": "math", "labels": [], "alpha": alpha, "tags": list(PAPER_TAGS.all)}
    broken = process_results(doc, ["<Thinking>3 + 4 = 7.</Thinking><Answer>7"])
    assert broken == {"acc": 1.0, "fmt": 0.0, "fmt_tags": 0.0, "score": pytest.approx(alpha)}
    wrong = process_results(doc, ["<Thinking>x</Thinking><Answer>8</Answer>"])
    assert wrong == {"acc": 0.0, "fmt": 1.0, "fmt_tags": 1.0, "score": pytest.approx(1 - alpha)}


SEPARATOR = FormatConfig().untagged_separator  # "\nThe answer is "


@pytest.mark.parametrize(("output", "expected"), [
    ("3 + 4 = 7.\nThe answer is 7", True),
    ("  3 + 4 = 7.\nThe answer is 7.\n", True),  # surrounding space, a full stop
    ("\nThe answer is 7", False),  # no reasoning
    ("3 + 4 = 7.\nThe answer is ", False),  # no answer
    ("3 + 4 = 7.\nThe answer is 7\nAnd some more thinking.", False),  # something after the answer
    ("3 + 4 = 7.\nThe answer is 7\nThe answer is 8", False),  # two answers
    ("The sum is 7.", False),  # no separator
    ("<Thinking>3 + 4 = 7.</Thinking>\nThe answer is 7", False),  # a tag in an untagged output
])
def test_the_untagged_layout_sft_trains(output: str, expected: bool) -> None:
    assert follows_untagged(output, SEPARATOR) is expected


def test_an_untagged_model_is_judged_on_its_own_format_and_fmt_tags_on_the_tags() -> None:
    doc = {"reference": "7", "kind": "math", "labels": [], "alpha": 0.7, "tags": list(PAPER_TAGS.all),
           "separator": SEPARATOR}
    own = process_results(doc, ["3 + 4 = 7, not 8.\nThe answer is 7"])
    assert own == {"acc": 1.0, "fmt": 1.0, "fmt_tags": 0.0, "score": pytest.approx(1.0)}
    tagged = process_results(doc, ["<Thinking>3 + 4</Thinking><Answer>7</Answer>"])
    assert tagged == {"acc": 1.0, "fmt": 0.0, "fmt_tags": 1.0, "score": pytest.approx(0.7)}
    # The answer is read after the separator, not as the last number of the whole output.
    assert grade("It is 7.\nThe answer is 7 (not 8)", "7", "math", separator=SEPARATOR).acc is False
    assert grade("It is 8.\nThe answer is 7", "7", "math", separator=SEPARATOR).acc is True


@pytest.mark.parametrize("reference, kind", [
    ("42", "math"), ("-3.5", "math"), ("1,000", "math"), ("\\frac{1}{2}", "math"), ("$x^2$", "math"),
    ("blue", "text"), ("B", "text"), ("yes", "text"),
])
def test_jsonl_answer_kind_is_inferred_from_the_reference(reference: str, kind: str) -> None:
    assert answer_kind(Example("q", "t", reference)) == kind
    assert answer_kind(Example("q", "t", reference), given="text") == "text"  # the user's word first
    assert answer_kind(Example("q", "t", reference, labels=("A", "B"))) == "choice"  # options listed
