import pytest

from sftkey_lora.data.segment import split_response


@pytest.mark.parametrize(("rules", "text", "expected"), [
    (["gsm8k"], "3 + 4 = <<3+4=7>>7\n#### 7", ("3 + 4 = 7", "7")),
    (["gsm8k"], "no marker here", None),
    (["answer_is"], "We add them. The answer is $5,000.", ("We add them.", "$5,000")),
    (["answer_is"], "the answer is 3, no wait. The final answer is: 4",
     ("the answer is 3, no wait.", "4")),
    (["boxed"], "So x = \\boxed{\\frac{1}{2}} holds.",
     ("So x = \\boxed{\\frac{1}{2}} holds.", "\\frac{1}{2}")),
    (["boxed"], "unbalanced \\boxed{1", None),
    (["last_line"], "step one\nstep two\n\n  42  \n", ("step one\nstep two", "42")),
    (["last_line"], "only one line", None),
    # the first rule that finds an answer wins
    (["gsm8k", "answer_is", "last_line"], "a\nThe answer is 5", ("a", "5")),
    (["boxed", "last_line"], "a\nb", ("a", "b")),
    # an empty answer does not count as found
    (["answer_is", "last_line"], "think\nThe answer is", ("think", "The answer is")),
])
def test_split_response(rules, text, expected) -> None:
    assert split_response(text, rules) == expected
