"""Masks from character spans: property tests on arbitrary text for two tokenizer families."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftkey_lora.data import DataReport, Example
from sftkey_lora.errors import UserError
from sftkey_lora.prep.masks import IGNORE, encode, special_prefix
from sftkey_lora.prep.prepare import encode_examples
from sftkey_lora.prep.render import Segment, render
from sftkey_lora.recipe import FormatConfig
from sftkey_lora.tags import PAPER_TAGS, Tags
from tests.real_tokenizers import NAMES
from tests.support import think_tags

THINK_TAGS = think_tags()
TAG_LIKE = [*PAPER_TAGS.all, *THINK_TAGS.all, "<", ">", "</", "><", "<Think", "Answer>", "</Answer", "#### 5"]
ALPHABET = st.characters(blacklist_categories=("Cs",), blacklist_characters="▁")
TEXT = st.lists(st.one_of(st.text(ALPHABET, max_size=12), st.sampled_from(TAG_LIKE)),
                max_size=6).map("".join)


def decoded_loss(tokenizer, encoded, kind: str) -> str:
    ids = [t for t in encoded.labels(kind) if t != IGNORE]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def normalized(tokenizer, text: str) -> str:
    """The text as the tokenizer sees it (Qwen's normalise to NFC: decoding gives that back)."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    return normalizer.normalize_str(text) if normalizer else text


def check_spans(tokenizer, prompt: str, thinking: str, answer: str, tagged: bool,
                tags: Tags = PAPER_TAGS) -> None:
    fmt = FormatConfig(tag_strings=tags)
    rendered = render(Example(prompt, thinking, answer), fmt, tagged)
    encoded = encode(rendered, tokenizer, special_prefix(tokenizer), Example(prompt, thinking, answer))
    offsets = tokenizer(rendered.text, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    eos = tokenizer.eos_token
    for kind, boundary in (("full", rendered.response_start), ("key", rendered.key_start)):
        mask = encoded.in_response if kind == "full" else encoded.in_key
        # The loss tokens are one suffix of the sequence, ending with the eos.
        first = list(mask).index(True)
        assert all(mask[first:]) and not any(mask[:first])
        assert encoded.input_ids[-1] == tokenizer.eos_token_id
        start, end = offsets[first - len(special_prefix(tokenizer))]
        # The first loss token starts at the boundary, or straddles it (and then only it does).
        assert start <= boundary < end or start == boundary
        assert decoded_loss(tokenizer, encoded, kind) == normalized(tokenizer, rendered.text[start:]) + eos
    if tagged:
        key = normalized(tokenizer, f"{tags.answer_open}{answer}{tags.answer_close}") + eos
        assert decoded_loss(tokenizer, encoded, "key").endswith(key)


settings_ = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings_
@given(prompt=TEXT, thinking=TEXT, answer=TEXT, tagged=st.booleans())
def test_loss_spans_byte_level_bpe(tiny_tokenizer, prompt, thinking, answer, tagged) -> None:
    check_spans(tiny_tokenizer, prompt, thinking, answer, tagged)


@settings_
@given(prompt=TEXT, thinking=TEXT, answer=TEXT, tagged=st.booleans())
def test_loss_spans_sentencepiece_style(sentencepiece_style_tokenizer, prompt, thinking, answer,
                                        tagged) -> None:
    check_spans(sentencepiece_style_tokenizer, prompt, thinking, answer, tagged)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tags", [PAPER_TAGS, THINK_TAGS], ids=["paper-tags", "think-tags"])
def test_loss_spans_real_tokenizers(real_tokenizers, name, tags) -> None:
    @settings(max_examples=60, deadline=None)
    @given(prompt=TEXT, thinking=TEXT, answer=TEXT, tagged=st.booleans())
    def check(prompt, thinking, answer, tagged) -> None:
        check_spans(real_tokenizers[name], prompt, thinking, answer, tagged, tags)

    check()


def test_straddling_token_counts_as_key(tiny_tokenizer) -> None:
    example = Example("q", "so 4.", "4")
    rendered = render(example, FormatConfig(), tagged=True)
    encoded = encode(rendered, tiny_tokenizer, [], example)
    pieces = [tiny_tokenizer.decode([t]) for t, k in zip(encoded.input_ids, encoded.in_key, strict=True) if k]
    # the built-in tokenizer merges `>` of </Thinking> with `<` of <Answer>
    assert pieces[0] == "><"
    assert decoded_loss(tiny_tokenizer, encoded, "key") == "><Answer>4</Answer><|endoftext|>"


def test_segments_and_eos_labelled_when_pad_is_eos(tiny_tokenizer) -> None:
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id
    example = Example("What is 2 + 2?", "2 + 2 = 4.", "4")
    encoded = encode(render(example, FormatConfig(), tagged=True), tiny_tokenizer, [], example)
    assert encoded.segments[-1] == Segment.EOS
    assert encoded.labels("key")[-1] == tiny_tokenizer.eos_token_id
    assert encoded.labels("full")[-1] == tiny_tokenizer.eos_token_id
    assert encoded.count(Segment.ANSWER) == 1 and encoded.count(Segment.EOS) == 1
    assert all(label == IGNORE for label, seg in zip(encoded.labels("full"), encoded.segments, strict=True)
               if seg == Segment.PROMPT)


def test_too_long_examples_are_dropped_and_counted(tiny_tokenizer) -> None:
    short = Example("q", "t", "1", "short")
    long = Example("q", "many words " * 60, "2", "long")
    report = DataReport("test", "train", rows_read=2, used=2)
    fmt = FormatConfig(max_length=200)
    kept = encode_examples([short, long], tiny_tokenizer, fmt, True, report)
    assert [e.example.id for e in kept] == ["short"]
    assert dict(report.dropped) == {"too_long": 1} and report.used == 1
    assert "format.max_length=200" in report.samples["too_long"][0]
    with pytest.raises(UserError, match="every example is longer"):
        encode_examples([long], tiny_tokenizer, fmt, True, DataReport("test", "train"))


def test_added_tag_tokens_are_single_and_never_special() -> None:
    from sftkey_lora.recipe import ModelConfig
    from sftkey_lora.train.loading import run_tokenizer
    from sftkey_lora.train.plan import TokenizerPlan

    fmt = FormatConfig(tags="added_tokens", system_prompt="")
    tokenizer, ids = run_tokenizer(TokenizerPlan(ModelConfig(), add_tags=True, tags=PAPER_TAGS))
    assert tokenizer.convert_ids_to_tokens(ids) == list(PAPER_TAGS.all)
    example = Example("q", "think", "7")
    encoded = encode(render(example, fmt, True), tokenizer, [], example)
    pieces = tokenizer.convert_ids_to_tokens(encoded.input_ids.tolist())
    for tag in PAPER_TAGS.all:
        assert pieces.count(tag) == 1
    assert decoded_loss(tokenizer, encoded, "key") == "<Answer>7</Answer><|endoftext|>"
    # lm-eval decodes with skip_special_tokens=True: the tags must survive it
    assert tokenizer.decode(encoded.input_ids, skip_special_tokens=True).endswith(
        "<Thinking>think</Thinking><Answer>7</Answer>")


def test_chat_template_mode_masks_only_the_response(tiny_tokenizer) -> None:
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>{{ m.role }}\n{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")
    fmt = FormatConfig(template="chat", system_prompt="Be brief.")
    example = Example("Add 2 and 3.", "2 + 3 = 5.", "5")
    rendered = render(example, fmt, True, tokenizer)
    assert rendered.text.startswith("<|endoftext|>system\nBe brief.\n<|endoftext|>user\nAdd 2 and 3.")
    encoded = encode(rendered, tokenizer, [], example)
    assert decoded_loss(tokenizer, encoded, "full") == (
        "<Thinking>2 + 3 = 5.</Thinking><Answer>5</Answer><|endoftext|>")
    with pytest.raises(UserError, match="no chat template"):
        render(example, fmt, True, tiny_tokenizer)


@pytest.mark.parametrize("name", ["qwen2.5", "llama-3"])
def test_a_batch_encodes_each_example_as_it_would_alone(real_tokenizers, name: str) -> None:
    """`encode_all` tokenizes a batch at a time: every row equals the example encoded alone,
    across batch boundaries and for examples of very different lengths."""
    import dataclasses

    from sftkey_lora.prep import masks

    tokenizer = real_tokenizers[name]
    fmt = FormatConfig()
    examples = [Example(f"What is {n} + {n}?", "Add them. " * (1 + n * 7 % 40), str(2 * n), id=str(n))
                for n in range(7)]
    prefix = special_prefix(tokenizer)
    alone = [encode(render(example, fmt, True), tokenizer, prefix, example) for example in examples]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(masks, "BATCH", 3)  # three batches, the last one short
        batched = list(masks.encode_all(examples, tokenizer, fmt, tagged=True))
    assert len(batched) == len(alone)
    for one, other in zip(alone, batched, strict=True):
        for field in dataclasses.fields(one):
            a, b = getattr(one, field.name), getattr(other, field.name)
            assert (a == b).all() if isinstance(a, np.ndarray) else a == b, field.name
