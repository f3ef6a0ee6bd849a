"""Evaluate a finished run (the model its plan names as final, as it trained), any model, or
a GGUF file (through llama.cpp).

A run is evaluated as its last stage trained it: for sftkey_tag the merged stage-1 model
loaded in 4-bit with the stage-2 adapter on top; for one-stage strategies the base with its
adapter; in full mode the last stage's own weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..recipe import Recipe
from ..rundir.files import write_json_atomic
from ..rundir.layout import EVAL_STEP, RunLayout
from ..rundir.outcomes import EvalOutcome
from ..rundir.record import RunRecord
from ..runtime.hardware import resolve_precision
from ..train.loading import load_model, load_tokenizer
from ..train.plan import EvalStep, FinalModel, plan_run
from .harness import evaluate, hf_lm
from .report import write_run_report


def evaluate_run(recipe: Recipe, record: RunRecord, step: EvalStep, training: str | None = None
                 ) -> dict[str, Any]:
    """Evaluate the run's final model; metrics.json, samples/, report.md and plots/ go into the
    run directory, and the `eval` step of run.json records what was measured."""
    plan = plan_run(recipe, record.layout)
    unfinished = [stage.name for stage in plan.stages if record.status(stage.name) != "complete"]
    if unfinished:
        raise UserError(f"{record.layout.root}: {', '.join(unfinished)} not trained yet; "
                        "`sftkey-lora run` its recipe first")
    model, tokenizer, described = _final_model(plan.final)
    described += (f"strategy `{recipe.strategy}`; greedy decoding"
                  f"{f', at most {step.limit} examples per task' if step.limit else ''}.")
    record.start(EVAL_STEP, tasks=step.tasks, limit=step.limit)
    started = time.perf_counter()
    metadata = {"recipe": recipe.model_dump(mode="json")}
    metrics = evaluate(hf_lm(model, tokenizer, step.settings), step.tasks, step.settings, metadata,
                       record.layout, step.limit)
    write_run_report(record.layout, recipe.name or record.layout.root.name, metrics, described,
                     step.settings.alpha, training)
    record.complete(EVAL_STEP, EvalOutcome(tasks=step.tasks, limit=step.limit,
                                           eval=step.settings.model_dump(mode="json"),
                                           seconds=round(time.perf_counter() - started, 1), metrics=metrics))
    return metrics


def _final_model(final: FinalModel) -> tuple[Any, Any, str]:
    """The final model as it trained (4-bit base + adapter, or the whole model), its tokenizer
    (saved beside it, tags included) and a line saying what it is."""
    from peft import PeftModel

    tokenizer = load_tokenizer(final.base.model_copy(update={"name_or_path": str(final.tokenizer),
                                                             "revision": None}))
    model = load_model(final.base, final.precision, vocab_size=len(tokenizer))
    if final.adapter is None:
        trained = f"Model: `{final.base.name_or_path}` ({final.precision}), every weight trained; "
        return model.eval(), tokenizer, trained
    model = PeftModel.from_pretrained(model, str(final.adapter)).eval()
    # lm-eval re-ties the embeddings. With trainable tag rows peft wraps the embedding, where
    # transformers 5 no longer finds it by name; they were tied when the model loaded.
    model.tie_weights = lambda *args, **kwargs: None
    quantized = "4-bit NF4" if final.base.quantization == "nf4" else final.precision
    described = f"Model: `{final.base.name_or_path}` ({quantized}) with the `{final.stage}` adapter; "
    return model, tokenizer, described


def evaluate_model(recipe: Recipe, out: RunLayout, step: EvalStep) -> dict[str, Any]:
    """Evaluate `recipe.model` as it is (e.g. the untuned base), loaded as training loads it,
    into `out`, which names the model (`evaluation.json`) and never takes another model's
    evaluation. Its own tokenizer: the base never saw tags as added tokens and reads them as text."""
    named = {"name_or_path": recipe.model.name_or_path, "revision": recipe.model.revision}
    refuse_another_model(named, out)
    tokenizer = load_tokenizer(recipe.model)
    precision = resolve_precision(recipe.training.precision)
    model = load_model(recipe.model, precision, vocab_size=len(tokenizer)).eval()
    write_json_atomic(out.evaluation_file, named)  # once it loaded: a missing model claims nothing
    quantized = "4-bit NF4" if recipe.model.quantization == "nf4" else precision
    name = recipe.model.name_or_path
    return _evaluate_into(out, hf_lm(model, tokenizer, step.settings), recipe, step, name,
                          f"Model: `{name}` ({quantized}), no adapter")


def evaluate_gguf(recipe: Recipe, gguf: Path, out: RunLayout, step: EvalStep) -> dict[str, Any]:
    """Evaluate a GGUF file through llama.cpp, prompts rendered by `recipe`'s format, into
    `out`, which names the file as `evaluate_model`'s output names its model."""
    from ..gguf.llamacpp import RELEASE
    from ..gguf.lm import LlamaCppLM

    named = {"name_or_path": str(gguf.resolve()), "revision": None}
    refuse_another_model(named, out)
    lm = LlamaCppLM(gguf)
    try:
        if recipe.format.template == "chat" or Path(recipe.model.name_or_path) == gguf.parent:
            renders = load_tokenizer(recipe.model)  # the tokenizer whose tokens the prompts hold
            differs = lm.foreign_to(renders)
            if differs:
                raise UserError(f"{gguf}: not a model of the tokenizer that renders its prompts "
                                f"({recipe.model.name_or_path}): {differs}; "
                                "give the --recipe of its own model")
        write_json_atomic(out.evaluation_file, named)
        return _evaluate_into(out, lm, recipe, step, gguf.name,
                              f"Model: `{gguf}` (GGUF, through llama.cpp of llama-cpp-python {RELEASE})")
    finally:
        lm.close()


def _evaluate_into(out: RunLayout, lm: Any, recipe: Recipe, step: EvalStep, label: str, model: str
                   ) -> dict[str, Any]:
    described = (f"{model}; greedy decoding"
                 f"{f', at most {step.limit} examples per task' if step.limit else ''}.")
    metadata = {"recipe": recipe.model_dump(mode="json")}
    metrics = evaluate(lm, step.tasks, step.settings, metadata, out, step.limit)
    write_run_report(out, label, metrics, described, step.settings.alpha)
    return metrics


def refuse_another_model(named: dict[str, str | None], out: RunLayout) -> None:
    """A directory that holds another model's evaluation is refused before anything in it
    changes (`significance` would read the wrong one)."""
    try:
        earlier = json.loads(out.evaluation_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        earlier = named
    except (OSError, ValueError) as err:
        raise UserError(f"{out.evaluation_file}: unreadable ({err}); remove the directory or choose "
                        "another --output") from None
    if {key: earlier.get(key) for key in named} != named:
        raise UserError(f"--output {out.root}: holds the evaluation of {earlier.get('name_or_path')!r}, "
                        f"not of {named['name_or_path']!r}; choose another --output")
