"""The four tag strings of the tagged format: `{think_open}…{think_close}{answer_open}…{answer_close}`,
no whitespace between. The paper's are `<Thinking>`, `</Thinking>`, `<Answer>`, `</Answer>`; a recipe
may name a model's own (`format.tag_strings`, e.g. Qwen3's `<think>`/`</think>`). Rendering, masks,
data checks, the format check and answer extraction all read them from here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator


class Tags(BaseModel):
    """Unknown keys are errors, as everywhere in a recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    think_open: str = "<Thinking>"
    think_close: str = "</Thinking>"  # the key tokens (Eq. 4) are everything after this one
    answer_open: str = "<Answer>"
    answer_close: str = "</Answer>"

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.think_open, self.think_close, self.answer_open, self.answer_close)

    @model_validator(mode="after")
    def _unambiguous(self) -> Tags:
        """Outputs are parsed by finding tags: an empty tag, or one inside another, would make
        that ambiguous."""
        names = ("think_open", "think_close", "answer_open", "answer_close")
        for name, tag in zip(names, self.all, strict=True):
            if not tag.strip():
                raise ValueError(f"{name}: a tag must not be empty")
            if tag != tag.strip():
                raise ValueError(f"{name}: {tag!r} starts or ends with whitespace, which the format "
                                 "check cannot tell from the text around it")
            for other_name, other in zip(names, self.all, strict=True):
                if other_name != name and tag in other:
                    raise ValueError(f"{name}: {tag!r} is part of {other_name} {other!r}; "
                                     "each tag must be found on its own")
        return self


PAPER_TAGS = Tags()


def paper_system_prompt(tags: Tags) -> str:
    """Appendix C.1 of the paper, the default system prompt for base models, naming `tags`."""
    return (
        "A conversation between User and Assistant. The user asks a question, and the Assistant "
        "solves it. The assistant first thinks about the reasoning process in the mind and then "
        "provides the user with the answer. The reasoning process and answer are enclosed within "
        f"{tags.think_open} {tags.think_close} and {tags.answer_open} {tags.answer_close} tags, "
        f"respectively, i.e., {tags.think_open} reasoning process here {tags.think_close} "
        f"{tags.answer_open} answer here {tags.answer_close}."
    )
