"""Evaluate a finished run (its last stage, as trained) or any model, and report.

A run is evaluated as stage 2 trained it: the merged stage-1 model loaded in 4-bit with
the stage-2 adapter on top (or, for one-stage strategies, the base with its adapter).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..loading import load_model, load_tokenizer
from ..plan import StagePlan, plan_stages
from ..recipe import Recipe
from ..rundir import RunRecord
from .harness import evaluate
from .report import write_run_report

EVAL_STEP = "eval"
Say = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def evaluate_run(recipe: Recipe, record: RunRecord, tasks: list[str] | None = None, limit: int | None = None,
                 training: str | None = None, say: Say = _stderr) -> dict[str, Any]:
    """Evaluate the run's final model; metrics.json, samples/, report.md and plots/ go into the
    run directory, and the `eval` step of run.json records what was measured."""
    plans = plan_stages(recipe, record.run_dir)
    unfinished = [plan.name for plan in plans if record.status(plan.name) != "complete"]
    if unfinished:
        raise UserError(f"{record.run_dir}: {', '.join(unfinished)} not trained yet; "
                        "`sftkey-lora run` its recipe first")
    tasks = tasks if tasks is not None else recipe.eval_tasks()
    limit = limit if limit is not None else recipe.eval.limit
    model, tokenizer, described = _final_model(recipe, plans[-1], record.run_dir)
    described += (f"strategy `{recipe.strategy}`; greedy decoding"
                  f"{f', at most {limit} examples per task' if limit else ''}.")
    record.update_step(EVAL_STEP, status="running", tasks=tasks, limit=limit)
    started = time.perf_counter()
    metrics = evaluate(model, tokenizer, tasks, recipe.eval, {"recipe": recipe.model_dump(mode="json")},
                       record.run_dir, limit, say)
    write_run_report(record.run_dir, recipe.name or record.run_dir.name, metrics, described, training)
    record.update_step(EVAL_STEP, status="complete", tasks=tasks, limit=limit, eval=recipe.eval.model_dump(
        mode="json"), seconds=round(time.perf_counter() - started, 1), metrics=metrics)
    return metrics


def _final_model(recipe: Recipe, last: StagePlan, run_dir: Path) -> tuple[Any, Any, str]:
    """The last stage's model as it trained (4-bit base + adapter, or the whole model), its
    tokenizer (saved beside it, tags included) and a line saying what it is."""
    from peft import PeftModel

    saved = run_dir / last.name
    tokenizer = load_tokenizer(last.model.model_copy(update={"name_or_path": str(saved), "revision": None}),
                               recipe.format)
    if last.config.training.mode == "full":
        model = load_model(last.model.model_copy(update={"name_or_path": str(saved)}), last.precision,
                           vocab_size=len(tokenizer)).eval()
        return model, tokenizer, f"Model: `{saved}` ({last.precision}), every weight trained; "
    model = load_model(last.model, last.precision, vocab_size=len(tokenizer))
    model = PeftModel.from_pretrained(model, str(saved)).eval()
    # lm-eval re-ties the embeddings. With trainable tag rows peft wraps the embedding, where
    # transformers 5 no longer finds it by name; they were tied when the model loaded.
    model.tie_weights = lambda *args, **kwargs: None
    quantized = "4-bit NF4" if last.model.quantization == "nf4" else last.precision
    described = f"Model: `{last.model.name_or_path}` ({quantized}) with the `{last.name}` adapter; "
    return model, tokenizer, described


def evaluate_model(recipe: Recipe, out_dir: Path, tasks: list[str] | None = None, limit: int | None = None,
                   say: Say = _stderr) -> dict[str, Any]:
    """Evaluate `recipe.model` as it is (e.g. the untuned base), loaded as training loads it."""
    from ..hardware import resolve_precision

    tasks = tasks if tasks is not None else recipe.eval_tasks()
    limit = limit if limit is not None else recipe.eval.limit
    # The base never saw added tag tokens: it reads the tags as the text they are.
    tokenizer = load_tokenizer(recipe.model, recipe.format.model_copy(update={"tags": "text"}))
    precision = resolve_precision(recipe.training.precision)
    model = load_model(recipe.model, precision, vocab_size=len(tokenizer)).eval()
    quantized = "4-bit NF4" if recipe.model.quantization == "nf4" else precision
    described = (f"Model: `{recipe.model.name_or_path}` ({quantized}), no adapter; greedy decoding"
                 f"{f', at most {limit} examples per task' if limit else ''}.")
    metrics = evaluate(model, tokenizer, tasks, recipe.eval, {"recipe": recipe.model_dump(mode="json")},
                       out_dir, limit, say)
    write_run_report(out_dir, recipe.model.name_or_path, metrics, described)
    return metrics
