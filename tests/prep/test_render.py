"""Rendering: the text training sees, with the character span of every segment."""

from __future__ import annotations

import numpy as np
import pytest

from sftkey_lora.data import Example
from sftkey_lora.errors import UserError
from sftkey_lora.prep.render import Segment, render, render_prompt
from sftkey_lora.recipe import FormatConfig
from sftkey_lora.tags import PAPER_TAGS
from tests.support import think_tags

EXAMPLE = Example(prompt="What is 2 + 3?", thinking="2 + 3 = 5.", answer="5")


def spans(rendered) -> list[tuple[Segment, str]]:
    """The text as consecutive (segment, piece) runs."""
    runs: list[tuple[Segment, str]] = []
    segments = rendered.segments_at(np.arange(len(rendered.text)))
    for char, segment in zip(rendered.text, map(Segment, segments), strict=True):
        if runs and runs[-1][0] == segment:
            runs[-1] = (segment, runs[-1][1] + char)
        else:
            runs.append((segment, char))
    return runs


def test_tagged_response_is_the_papers_format_with_every_span() -> None:
    fmt = FormatConfig(system_prompt="Be brief.")
    rendered = render(EXAMPLE, fmt, tagged=True)
    prompt = "Be brief.\nUser: What is 2 + 3?\nAssistant:\n"
    assert rendered.text == f"{prompt}<Thinking>2 + 3 = 5.</Thinking><Answer>5</Answer>"
    assert spans(rendered) == [
        (Segment.PROMPT, prompt), (Segment.TAG, "<Thinking>"), (Segment.THINKING, "2 + 3 = 5."),
        (Segment.TAG, "</Thinking><Answer>"), (Segment.ANSWER, "5"), (Segment.TAG, "</Answer>")]
    assert rendered.response_start == len(prompt)
    assert rendered.text[rendered.key_start:] == "<Answer>5</Answer>"  # everything after </Thinking>


def test_model_native_tags_render_everywhere_the_papers_did() -> None:
    think = think_tags()
    fmt = FormatConfig(tag_strings=think)
    rendered = render(EXAMPLE, fmt, tagged=True)
    assert rendered.text.endswith("<think>2 + 3 = 5.</think><answer>5</answer>")
    assert rendered.text[rendered.key_start:] == "<answer>5</answer>"
    # The default system prompt (Appendix C.1) names the recipe's tags, not the paper's.
    assert "<think> reasoning process here </think> <answer> answer here </answer>" in fmt.system_prompt
    assert "<Thinking>" not in rendered.text
    assert FormatConfig().system_prompt.count(PAPER_TAGS.think_open) == 2
    assert FormatConfig(tag_strings=think, system_prompt="Own.").system_prompt == "Own."


@pytest.mark.parametrize(("tags", "field"), [
    ({"think_open": ""}, "think_open: a tag must not be empty"),
    ({"answer_open": "<Thinking"}, "answer_open: '<Thinking' is part of think_open"),
    ({"think_close": " </t>"}, "think_close: ' </t>' starts or ends with whitespace"),
    ({"end": "x"}, "end"),
])
def test_tag_strings_must_be_unambiguous(tags, field) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        FormatConfig(tag_strings=tags)


def test_untagged_response_keys_from_the_separator() -> None:
    fmt = FormatConfig(system_prompt="", untagged_separator="\nSo: ")
    rendered = render(EXAMPLE, fmt, tagged=False)
    assert rendered.text == "User: What is 2 + 3?\nAssistant:\n2 + 3 = 5.\nSo: 5"
    assert rendered.text[rendered.key_start:] == "\nSo: 5"
    assert spans(rendered)[-2:] == [(Segment.TAG, "\nSo: "), (Segment.ANSWER, "5")]


def test_prompts_of_evaluation_are_those_of_training() -> None:
    fmt = FormatConfig()
    rendered = render(EXAMPLE, fmt, tagged=True)
    assert rendered.text.startswith(render_prompt(EXAMPLE.prompt, fmt))
    assert render_prompt("Q", FormatConfig(system_prompt="")) == "User: Q\nAssistant:\n"


def test_chat_template_renders_through_the_tokenizer(tiny_tokenizer) -> None:
    class Chat:
        chat_template = "set"

        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    fmt = FormatConfig(template="chat", system_prompt="S")
    assert render_prompt("Q", fmt, Chat()) == "<system>S<user>Q<assistant>"
    assert render_prompt("Q", fmt.model_copy(update={"system_prompt": ""}), Chat()) == "<user>Q<assistant>"
    assert tiny_tokenizer.chat_template is None  # a base model's tokenizer
    with pytest.raises(UserError, match="format.template: chat, but the tokenizer has no chat template"):
        render_prompt("Q", fmt, tiny_tokenizer)
