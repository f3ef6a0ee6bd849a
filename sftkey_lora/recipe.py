"""Recipe: the YAML a user writes, turned into one typed, validated config.

Every default lives here and nowhere else. Loading never raises anything but
`UserError`, whose message names the dotted field or the file at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError, first_line

# Appendix C.1 of the paper, the default system prompt for base models.
PAPER_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<Thinking> </Thinking> and <Answer> </Answer> tags, respectively, i.e., <Thinking> "
    "reasoning process here </Thinking> <Answer> answer here </Answer>."
)

Strategy = Literal["sft", "sft_tag", "key_tag", "sftkey_tag"]
Source = Literal["synthetic", "jsonl", "gsm8k", "openbookqa", "openr1_math", "cot_collection"]
SegmentationRule = Literal["gsm8k", "answer_is", "boxed", "last_line"]


class _Section(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    # `builtin:tiny` is the offline model shipped with the package; anything else is a
    # hub id or a local directory, loaded through the same `from_pretrained` path.
    name_or_path: str = "builtin:tiny"
    revision: str | None = None
    trust_remote_code: bool = False


class SyntheticConfig(_Section):
    n_train: int = Field(2000, gt=0)
    n_test: int = Field(200, gt=0)
    seed: int = 0


class DataConfig(_Section):
    source: Source = "synthetic"
    # A local JSON/JSONL/Parquet file in the source's own schema, used instead of the hub.
    path: Path | None = None
    split: str = "train"
    limit: int | None = Field(None, gt=0)
    # Malformed JSON lines are an error unless this is set; then they are counted and skipped.
    skip_bad_rows: bool = False
    # How a raw `response` (jsonl source) is split into thinking and answer; first match wins.
    segmentation: list[SegmentationRule] = ["gsm8k", "answer_is", "boxed", "last_line"]
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("segmentation")
    @classmethod
    def _some_rule(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one rule")
        return value


class FormatConfig(_Section):
    # `base`: system prompt + "User:"/"Assistant:" lines; `chat`: the tokenizer's chat template.
    template: Literal["base", "chat"] = "base"
    system_prompt: str = PAPER_SYSTEM_PROMPT
    # Tags as plain text, or as added (never special) tokens with trainable embedding rows.
    tags: Literal["text", "added_tokens"] = "text"
    # Untagged rendering (the `sft` baseline): thinking, this separator, then the answer.
    untagged_separator: str = "\nThe answer is "
    max_length: int = Field(512, ge=16)


class Recipe(_Section):
    name: str | None = None
    strategy: Strategy = "sftkey_tag"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    format: FormatConfig = FormatConfig()


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply `dotted.key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path}:{line} is not valid YAML ({first_line(err)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    raw.setdefault("name", path.stem)
    return validate_recipe(raw, source=str(path))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists...)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected dotted.key=value")
    parts = key.strip().split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = text


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = first["msg"].removeprefix("Value error, ")
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise UserError(f"{source}: field `{field}`: {message}{more}") from None

