"""The documents and per-sample metrics of the `sftkey_*` lm-eval tasks in `eval_tasks/`.

lm-eval builds each task's documents through `custom_dataset`, passing the task metadata:
the CLI's `--metadata` JSON merged with its `--model_args`. So prompts are rendered by the
very code that rendered them in training: with `pretrained=RUN/stage1-merged` (or
`peft=RUN/stage1`) the run's own recipe is found in `RUN/run.json`; without a run, the
paper's base format (Appendix C.1 system prompt) applies.

Metadata keys read here (all optional):
  data_path    a local test file in the source's own schema, instead of the hub
               (the `sftkey_jsonl` task needs one)
  split        the hub split to evaluate on, instead of the task's own
  recipe       a recipe whose `format` and `data.synthetic` apply: a YAML file, or the
               resolved recipe as a mapping (as `sftkey-lora eval` passes it); without it,
               the recipe of the run `pretrained` / `peft` belong to, or the one an export
               carries (`sftkey_recipe.json`)
  alpha        the weight of acc in score (default 0.7)
  answer_kind  `math`, `choice` or `text`: how `sftkey_jsonl` compares answers
               (default: math when the reference reads as a number or LaTeX, else text)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ..data import SOURCES, AnswerKind, Example, load_examples, task_name
from ..errors import UserError
from ..prep.render import render_prompt
from ..recipe import DataConfig, EvalConfig, FormatConfig, ModelConfig, Recipe, load_recipe, validate_recipe
from ..rundir.layout import EXPORTED_RECIPE, RunLayout
from ..rundir.record import is_run, recorded_recipe
from ..strategies import STRATEGIES
from ..tags import Tags
from .metrics import Grade, grade, score

# Task name -> the data source whose test split it evaluates on: one task per source.
TASKS: dict[str, str] = {task_name(source): source for source in SOURCES}
_MATH_LIKE = re.compile(r"\s*-?[\d.,]+\s*|.*[\\$^].*", re.DOTALL)  # a number, or LaTeX


def build_docs(task: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """{"test": a `datasets.Dataset` of documents}: id, question, prompt, reference, kind,
    labels, alpha, tags (the four tag strings the format check and extraction use)."""
    import datasets

    source = TASKS[task]
    spec = SOURCES[source]
    recipe = recipe_from_metadata(metadata)
    data_path = metadata.get("data_path") or _recipe_eval_path(recipe, source)
    if spec.test_split is None and not data_path:
        raise UserError(f"{task}: give the test file as --metadata '{{\"data_path\": \"test.jsonl\"}}' "
                        "(or eval.path in the recipe)")
    fmt = recipe.format if recipe else FormatConfig()
    data = DataConfig(
        source=source,
        path=Path(data_path) if data_path else None,
        split=metadata.get("split") or spec.test_split or "test",
        synthetic=recipe.data.synthetic if recipe else DataConfig().synthetic,
    )
    try:
        examples, report = load_examples(data, tags=fmt.tag_strings)
    except UserError as err:
        raise UserError(f"{task}: {err} For evaluation, give the file as eval.path in the recipe, or "
                        f"--metadata '{{\"data_path\": \"FILE\"}}' to lm_eval.") from None
    if report.dropped:  # a smaller test set changes every figure: say so
        logging.getLogger(__name__).warning("%s: %s", task, report.format())
    tokenizer = _chat_tokenizer(fmt, recipe, metadata)
    alpha = float(metadata.get("alpha", EvalConfig().alpha))
    docs = [{
        "id": example.id, "question": example.prompt,
        "prompt": render_prompt(example.prompt, fmt, tokenizer), "reference": example.answer,
        "kind": spec.answer or answer_kind(example, metadata.get("answer_kind")),
        "labels": list(example.labels), "alpha": alpha, "tags": list(fmt.tag_strings.all),
        "separator": untagged_separator(recipe),
    } for example in examples]
    return {"test": datasets.Dataset.from_list(docs)}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval's per-sample metrics; each is averaged over the task."""
    graded = grade_document(doc, results[0])
    return {"acc": float(graded.acc), "fmt": float(graded.fmt), "fmt_tags": float(graded.fmt_tags),
            "score": score(graded.acc, graded.fmt, doc["alpha"])}


def grade_document(doc: dict[str, Any], output: str) -> Grade:
    """Grade one output against a document built by `build_docs`, in the run's tag strings
    and the format its strategy trains."""
    tags = Tags(**dict(zip(Tags.model_fields, doc["tags"], strict=True)))
    return grade(output, doc["reference"], doc["kind"], tuple(doc["labels"]), tags,
                 separator=doc.get("separator") or None)


def untagged_separator(recipe: Recipe | None) -> str:
    """The separator an untagged (`sft`) run's model writes before its answer; "" when the
    model was trained on tags, or when no run names its strategy (the tag format is judged)."""
    if recipe is None or STRATEGIES[recipe.strategy].tagged:
        return ""
    return recipe.format.untagged_separator


def answer_kind(example: Example, given: AnswerKind | None = None) -> AnswerKind:
    """How an example's answer compares where its source does not say: an option letter where
    it lists options, else the kind given, else math when the reference reads as a number or
    LaTeX, else text."""
    if example.labels:
        return "choice"
    return given or ("math" if _MATH_LIKE.fullmatch(example.answer) else "text")


def recipe_from_metadata(metadata: dict[str, Any]) -> Recipe | None:
    """The recipe named by `recipe`, or the one recorded beside `pretrained` / `peft`."""
    given = metadata.get("recipe")
    if isinstance(given, dict):
        return validate_recipe(given, source="metadata recipe")
    if given:
        return load_recipe(given)
    for key in ("peft", "pretrained"):
        value = metadata.get(key)
        if isinstance(value, str) and is_run(Path(value).parent):
            return recorded_recipe(RunLayout(Path(value).parent))
        if isinstance(value, str) and (Path(value) / EXPORTED_RECIPE).is_file():  # `sftkey-lora export`
            exported = Path(value) / EXPORTED_RECIPE
            return validate_recipe(json.loads(exported.read_text(encoding="utf-8")), source=str(exported))
    return None


def _recipe_eval_path(recipe: Recipe | None, source: str) -> Path | None:
    if recipe is None or recipe.data.source != source:
        return None
    return recipe.eval.path


def _chat_tokenizer(fmt: FormatConfig, recipe: Recipe | None, metadata: dict[str, Any]) -> Any:
    """The tokenizer whose chat template renders prompts, when the format asks for one."""
    if fmt.template != "chat":
        return None
    from ..train.loading import load_tokenizer

    model = recipe.model if recipe else None
    name = metadata.get("pretrained") or (model.name_or_path if model else None)
    if not isinstance(name, str):
        raise UserError("format.template: chat needs the model's tokenizer; pass pretrained=PATH")
    base = model or ModelConfig()
    return load_tokenizer(base.model_copy(update={"name_or_path": name}))
