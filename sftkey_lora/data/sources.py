"""Data sources: each maps a row of its own schema to an `Example`. `SOURCES` is the one
table of them: the recipe's `data.source` values, the hub datasets and the lm-eval tasks
all come from it.

Hub sources read through `datasets.load_dataset`; `data.path` swaps the hub for a local
file in the same schema. Rows that cannot be used are counted by reason, never dropped
silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import UserError, first_line
from ..tags import PAPER_TAGS, Tags
from .example import AnswerKind, BadRow, DataReport, Example
from .files import Row, read_local_rows
from .segment import split_gsm8k, split_response
from .synthetic import synthetic_split

if TYPE_CHECKING:  # the recipe names its sources from this module's table
    from ..recipe import DataConfig


def _field(row: dict[str, Any], name: str) -> str:
    """A required text field; numbers are accepted as their text, surrounding space removed."""
    value = row.get(name)
    if value is None:
        raise BadRow(f"missing_{name}", f"no `{name}` field")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadRow(f"bad_{name}", f"`{name}` is a {type(value).__name__}, expected text")
    return str(value).strip()


def gsm8k_row(row: dict[str, Any], cfg: DataConfig) -> Example:
    split = split_gsm8k(_field(row, "answer"))
    if split is None:
        raise BadRow("no_answer_marker", "`answer` has no `####`")
    return Example(_field(row, "question"), split[0], split[1])


def openbookqa_row(row: dict[str, Any], cfg: DataConfig) -> Example:
    stem, key = _field(row, "question_stem"), _field(row, "answerKey")
    choices = row.get("choices")
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list) or not (
        isinstance(choices.get("label"), list) and len(choices["label"]) == len(choices["text"])
    ):
        raise BadRow("bad_choices", "`choices` needs equally long `text` and `label` lists")
    options = dict(zip(choices["label"], choices["text"], strict=True))
    if key not in options:
        raise BadRow("bad_answerKey", f"answerKey {key!r} is not one of {list(options)}")
    prompt = stem + "\n" + "\n".join(f"{label}. {text}" for label, text in options.items())
    fact = str(row.get("fact1") or "").strip()
    if fact:
        fact = fact[0].upper() + fact[1:] + ("" if fact.endswith(".") else ".") + " "
    thinking = f'{fact}The option that fits is "{options[key]}".'
    return Example(prompt, thinking, key, labels=tuple(options))


def openr1_math_row(row: dict[str, Any], cfg: DataConfig) -> Example:
    return Example(_field(row, "problem"), _field(row, "solution"), _field(row, "answer"))


def cot_collection_row(row: dict[str, Any], cfg: DataConfig) -> Example:
    return Example(_field(row, "source"), _field(row, "rationale"), _field(row, "target"))


def jsonl_row(row: dict[str, Any], cfg: DataConfig) -> Example:
    """`question` + `thinking` + `answer`, or `question` + a raw `response` to segment."""
    question = _field(row, "question")
    if "thinking" in row or "answer" in row or "response" not in row:
        return Example(question, _field(row, "thinking"), _field(row, "answer"))
    found = split_response(_field(row, "response"), cfg.segmentation)
    if found is None:
        raise BadRow("unsegmented_response", f"no rule of {cfg.segmentation} found an answer")
    return Example(question, found[0], found[1])


@dataclass(frozen=True)
class SourceSpec:
    # How a row of the source's schema becomes an Example; None: built in (synthetic).
    row: Callable[[dict[str, Any], DataConfig], Example] | None
    hub: tuple[str, str | None] | None  # (dataset id, config name); None: never on the hub
    test_split: str | None  # the split its lm-eval task reads; None: a local file only
    answer: AnswerKind | None  # how answers compare; None: from each example (choice where it
    # has option letters, else as the reference reads)


# OpenR1-Math-220k and CoT-Collection have only a train split: their last 500 rows are the
# test set, apart from the first rows the shipped recipes train on (`data.limit`).
SOURCES: dict[str, SourceSpec] = {
    "synthetic": SourceSpec(None, None, "test", None),  # numbers, or option letters
    "jsonl": SourceSpec(jsonl_row, None, None, None),
    "gsm8k": SourceSpec(gsm8k_row, ("openai/gsm8k", "main"), "test", "math"),
    "openbookqa": SourceSpec(openbookqa_row, ("allenai/openbookqa", "additional"), "test", "choice"),
    "openr1_math": SourceSpec(openr1_math_row, ("open-r1/OpenR1-Math-220k", "default"),
                              "train[-500:]", "math"),
    "cot_collection": SourceSpec(cot_collection_row, ("kaist-ai/CoT-Collection", None),
                                 "train[-500:]", "text"),
}


def task_name(source: str) -> str:
    """The lm-eval task (`eval_tasks/<name>.yaml`) that evaluates on a source's test split."""
    return f"sftkey_{source}"


def load_examples(cfg: DataConfig, split: str | None = None,
                  tags: Tags = PAPER_TAGS) -> tuple[list[Example], DataReport]:
    """All usable examples of a split, and the report of what was read and dropped (among them
    rows whose text holds one of `tags`)."""
    split = split or cfg.split
    report = DataReport(source=cfg.source, split=split if cfg.path is None else str(cfg.path))
    to_example = SOURCES[cfg.source].row
    if to_example is None:  # built in: generated, not read
        if split not in ("train", "test"):
            raise UserError(f"data.split: the synthetic source has `train` and `test`, not {split!r}")
        s = cfg.synthetic
        examples = synthetic_split(split, s.n_train, s.n_test, s.seed, s.answer)[: cfg.limit]
        report.rows_read = report.used = len(examples)
        return examples, report
    examples = []
    for where, row in _rows(cfg, split, report):
        if cfg.limit is not None and len(examples) >= cfg.limit:
            break
        report.rows_read += 1
        try:
            example = to_example(row, cfg)
            _check_usable(example, tags)
        except BadRow as bad:
            report.drop(bad.reason, where, bad.detail)
            continue
        row_id = row.get("id")
        examples.append(replace(example, id=str(row_id) if row_id is not None else f"{cfg.source}:{where}"))
    report.used = len(examples)
    if not examples:
        raise UserError(f"data: no usable rows in {report.split}\n{report.format()}")
    return examples, report


def _check_usable(example: Example, tags: Tags) -> None:
    if not example.prompt:
        raise BadRow("empty_prompt")
    if not example.answer:
        raise BadRow("empty_answer")
    for text in (example.prompt, example.thinking, example.answer):
        for tag in tags.all:
            if tag in text:
                # Policy: a literal tag inside the text would make the output ambiguous to
                # parse and to score, so such rows are dropped (and counted).
                raise BadRow("tag_in_text", f"contains {tag}")


def _rows(cfg: DataConfig, split: str, report: DataReport) -> Iterator[Row]:
    if cfg.path is not None:
        yield from read_local_rows(cfg.path, report, cfg.skip_bad_rows)
        return
    hub = SOURCES[cfg.source].hub
    if hub is None:
        raise UserError(f"data.path: the {cfg.source} source needs a file (data.path: my_data.jsonl)")
    yield from _hub_rows(cfg.source, hub, split)


def _hub_rows(source: str, hub: tuple[str, str | None], split: str) -> Iterator[Row]:
    import datasets

    repo, config = hub
    try:
        table = datasets.load_dataset(repo, config, split=split)
    except Exception as err:  # offline, missing split, unknown repo: all the user's to fix
        offline = " (HF_HUB_OFFLINE is set, nothing can be downloaded)" if os.environ.get(
            "HF_HUB_OFFLINE") == "1" else ""
        raise UserError(
            f"data.source {source}: cannot load {repo} split {split!r}{offline}: "
            f"{first_line(err)}. "
            f"Set data.path to a local JSON/JSONL/Parquet file in the {source} schema."
        ) from None
    for index, row in enumerate(table):
        yield f"row {index}", row
