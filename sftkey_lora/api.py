"""The Python API: what every command does, callable from a notebook or a script; the CLI
is a thin layer over it. A user error raises `UserError` (the CLI turns it into exit code 2).

    from sftkey_lora import compare, evaluate, export, load_recipe, run
    recipe = load_recipe("recipes/quickstart.yaml", {"data.synthetic.n_train": 500})
    record = run(recipe, "adapters/mine")
    metrics = evaluate("adapters/mine", limit=20)
    model_dir = export("adapters/mine")

Heavy libraries (torch, transformers, lm-eval) are imported only when a function needs them.
The functions print what the CLI prints; `set_verbosity("quiet")` or `("verbose")` changes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import UserError
from .output import ensure_output, logged_to, set_verbosity
from .recipe import Recipe, apply_override, validate_recipe
from .recipe import load_recipe as _read_recipe
from .rundir.layout import EXPORTED_RECIPE, RunLayout
from .rundir.lock import holding

if TYPE_CHECKING:
    from .evaluation.significance import Pair
    from .rundir.record import RunRecord
    from .train.plan import EvalStep

__all__ = ["compare", "default_output", "evaluate", "export", "load_recipe", "run", "set_verbosity",
           "significance"]
Overrides = Mapping[str, Any] | Sequence[str] | None


def load_recipe(path: str | Path, overrides: Overrides = None) -> Recipe:
    """A recipe file with overrides: `{"data.limit": 100}`, or the CLI's `["data.limit=100"]`."""
    return _read_recipe(path, _as_items(overrides))


def default_output(recipe: Recipe, suffix: str = "") -> Path:
    """Where a run (or, with `-compare`, a comparison) of the recipe goes unless told."""
    return Path("adapters") / f"{recipe.name or 'run'}{suffix}"


def run(recipe: Recipe, output: str | Path | None = None, fresh: bool = False) -> RunRecord:
    """Train every stage of the recipe's strategy not yet complete, then evaluate; the run
    directory is held throughout, and refused if another process holds it."""
    ensure_output()
    run_dir = Path(output) if output is not None else default_output(recipe)
    if recipe.model.backend == "unsloth":
        from .train.unsloth import require_unsloth

        require_unsloth()  # before transformers is imported, so that its patches apply
    with holding(RunLayout(run_dir).claim):  # a directory in use refused before the heavy imports
        from .pipeline import run_recipe

        return run_recipe(recipe, run_dir, fresh=fresh)


def evaluate(target: str | Path, tasks: list[str] | None = None, limit: int | None = None,
             recipe: str | Path | Recipe | None = None, output: str | Path | None = None,
             overrides: Overrides = None) -> dict[str, Any]:
    """Evaluate a run directory (its final model, with its own recipe, into its directory), or
    any model as it is (a hub id, a directory, `builtin:tiny`, a `.gguf` file run by llama.cpp)
    with `recipe`'s format and evaluation settings into `output` (default `evals/<model name>/`;
    for a GGUF of an export, the export's recipe unless `recipe` is given). Returns the metrics."""
    ensure_output()
    from .evaluation.runner import evaluate_gguf, evaluate_model, evaluate_run
    from .rundir.diskfull import disk_full_stops
    from .rundir.manifest import refuse_damaged_export
    from .rundir.record import RunRecord, is_run, recorded_recipe
    from .train.plan import plan_evaluation, plan_run, refuse_damaged

    if limit is not None and limit < 1:
        raise UserError("--limit: must be at least 1")
    layout = RunLayout(Path(target))
    if is_run(layout.root):
        if recipe is not None or output is not None:
            raise UserError("--recipe / --output: a run is evaluated with its own recipe, into its directory")
        own = recorded_recipe(layout, _as_items(overrides))
        with holding(layout.claim), logged_to(layout.log_file), disk_full_stops("eval", layout.root):
            record = RunRecord.open(layout, own, fresh=False)  # refuses a change to what was trained
            refuse_damaged(plan_run(own, layout), lambda name: record.status(name) == "complete")
            return evaluate_run(own, record, _evaluation(plan_evaluation(own, tasks, limit)))
    gguf = Path(target) if str(target).endswith(".gguf") else None
    if gguf is not None and not gguf.is_file():
        raise UserError(f"{gguf}: no such GGUF file")
    refuse_damaged_export(gguf.parent if gguf else Path(target), gguf.name if gguf else None)
    beside = gguf.parent / EXPORTED_RECIPE if gguf else None
    if recipe is None and beside is not None and beside.is_file():  # the export's own recipe
        recipe = validate_recipe(json.loads(beside.read_text(encoding="utf-8")), source=str(beside))
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe) if recipe else Recipe()
    raw = base.model_dump(mode="json")
    if gguf is None or (gguf.parent / "tokenizer_config.json").is_file():  # what renders the prompts
        raw["model"]["name_or_path"] = str(gguf.parent if gguf else target)
    for item in _as_items(overrides):
        apply_override(raw, item)
    chosen = validate_recipe(raw, source=str(recipe if isinstance(recipe, str | Path) else "eval"))
    name = gguf.stem if gguf else Path(str(target).removeprefix("builtin:")).name
    out = RunLayout(Path(output) if output is not None else Path("evals") / name)
    step = _evaluation(plan_evaluation(chosen, tasks, limit))  # checked before the directory is made
    if is_run(out.root):
        raise UserError(f"--output {out.root}: a run directory, whose evaluation is its own final model's; "
                        f"evaluate the run with `sftkey-lora eval {out.root}`, or choose another --output")
    with holding(out.evaluation_claim), disk_full_stops("eval", out.root):
        return evaluate_gguf(chosen, gguf, out, step) if gguf else evaluate_model(chosen, out, step)


def compare(recipe: Recipe, output: str | Path | None = None, fresh: bool = False,
            seeds: list[int] | None = None) -> dict[str, Any]:
    """Every strategy trained and evaluated with the recipe's settings (once per seed where
    `seeds` are given); writes comparison.md and comparison.json, returns the figures."""
    ensure_output()
    from .comparison import compare as compare_strategies

    out = Path(output) if output is not None else default_output(recipe, "-compare")
    return compare_strategies(recipe, out, fresh, seeds)


def export(run_dir: str | Path, output: str | Path | None = None,
           dtype: Literal["bf16", "fp16", "fp32"] | None = None, gguf: Sequence[str] = (),
           gguf_adapter: bool = False) -> Path:
    """A finished run's final model as one plain model directory (default `RUN/final/`):
    weights merged, in `dtype` (default: the base model's own), tokenizer with the tags,
    generation config, model card; with `gguf` types (`f16`, `q8_0`, `q4_k_m`, …) also as
    llama.cpp GGUF files with an Ollama Modelfile, and with `gguf_adapter` the last stage's
    base and adapter as a GGUF pair. Returns where it went."""
    ensure_output()
    from .model_export import export_run

    return export_run(Path(run_dir), Path(output) if output is not None else None, dtype, gguf, gguf_adapter)


def significance(a: str | Path, b: str | Path) -> list[Pair]:
    """The paired differences a − b of two evaluations on every task both were evaluated on."""
    ensure_output()
    from .evaluation.significance import compare_evaluations

    return compare_evaluations(Path(a), Path(b))


def _as_items(overrides: Overrides) -> list[str]:
    """Overrides as `dotted.key=value` items; mapping values are written as JSON, which YAML reads back."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]
    return list(overrides)


def _evaluation(step: EvalStep | None) -> EvalStep:
    if step is None:
        raise UserError("eval.tasks: no task to evaluate on; give --tasks (and eval.path for a jsonl source)")
    return step
