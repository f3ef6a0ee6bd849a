"""`sftkey-lora export`: a finished run as one model directory to deploy.

The final model as the run trained it: for `sftkey_tag` the stage-2 adapter merged into the
16-bit `stage1-merged/` (never into 4-bit weights, which would re-quantize them), for a
one-stage strategy its adapter merged into the base's weights, in full mode the last stage's
own (fp32 master) weights; written in the dtype asked for, by default the base model's own.
Beside them the tokenizer with the tags, the generation config, a model card and the run's
recipe (`sftkey_recipe.json`, which the lm-eval tasks read to render prompts as in training);
no adapter, no trainable token rows, nothing a server has to understand beyond a plain causal LM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .rundir.files import empty_temporary, replace_dir, write_json_atomic, write_text_atomic
from .rundir.layout import EXPORTED_RECIPE, Claim, RunLayout
from .rundir.lock import holding
from .rundir.record import RunRecord, is_run, recorded_recipe
from .runtime.hardware import ResolvedPrecision, torch_dtype
from .strategies import STRATEGIES
from .train.loading import declared_precision
from .train.plan import FinalModel, plan_run


def export_run(run_dir: Path, output: Path | None = None, dtype: ResolvedPrecision | None = None) -> Path:
    """Write the run's final model to `output` (default `RUN/final/`) in `dtype` (default the
    dtype the base model's checkpoint declares); returns where."""
    layout = RunLayout(run_dir)
    if not is_run(run_dir):
        raise UserError(f"{run_dir}: not a run directory (no run.json); give a directory "
                        "`sftkey-lora run` wrote")
    recipe = recorded_recipe(layout)
    plan = plan_run(recipe, layout)
    record = RunRecord.read(layout)
    unfinished = [step.name for step in plan.steps if record.status(step.name) != "complete"]
    if unfinished:
        raise UserError(f"{run_dir}: {', '.join(unfinished)} not complete; finish the run first "
                        "(`sftkey-lora run` with its recipe resumes it)")
    out = output or layout.export_dir
    with holding(layout.claim), holding(Claim(out, EXPORTED_RECIPE, beside=True)):
        tmp = empty_temporary(out)
        model, tokenizer = final_model(plan.final)
        dtype = dtype or declared_precision(recipe.model)
        model = model.to(torch_dtype(dtype))
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_text_atomic(tmp / "README.md", model_card(record.data, plan.final, out, dtype))
        write_json_atomic(tmp / EXPORTED_RECIPE, record.data["recipe"])
        readable_as_umask_allows(tmp)
        replace_dir(tmp, out)
    return out


def readable_as_umask_allows(folder: Path) -> None:
    """transformers writes weights through a private temporary file (mode 0600); an export is
    meant to be served, often by another user, so every file gets the mode the umask gives."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def final_model(final: FinalModel) -> tuple[Any, Any]:
    """The final model merged into plain weights (the checkpoint's dtype, on the CPU), and its
    tokenizer (saved beside the last stage, tags included)."""
    from .train.loading import load_tokenizer, pretrained_model
    from .train.merge import merged_16bit

    tokenizer = load_tokenizer(final.base.model_copy(update={"name_or_path": str(final.tokenizer),
                                                             "revision": None}))
    if final.adapter is None:
        return pretrained_model(final.base, len(tokenizer), dtype="auto"), tokenizer
    return merged_16bit(final.base, final.adapter, "original", len(tokenizer), final.precision), tokenizer


def model_card(record: dict[str, Any], final: FinalModel, out: Path, dtype: ResolvedPrecision) -> str:
    """README.md of the export: what it was trained from and with, how well it did, how to load
    it; the hub's metadata header written by huggingface_hub's ModelCard, which the hub reads."""
    from huggingface_hub import ModelCard, ModelCardData

    recipe = record["recipe"]
    metrics = record.get("steps", {}).get("eval", {}).get("metrics", {})
    data = record.get("data", {})
    rows = [f"| {task} | {values.get('acc', float('nan')):.3f} | {values.get('fmt', float('nan')):.3f} | "
            f"{values.get('score', float('nan')):.3f} | {values.get('n', '')} |"
            for task, values in metrics.items() if "tasks" not in values]
    front = ModelCardData(base_model=recipe["model"]["name_or_path"], library_name="transformers",
                          tags=["sftkey-lora", recipe["strategy"]])
    return str(ModelCard("\n".join([
        "---", front.to_yaml(), "---", "",
        f"# {recipe.get('name') or out.name}", "",
        f"Fine-tuned from `{recipe['model']['name_or_path']}` with sftkey-lora, strategy "
        f"`{recipe['strategy']}` ({final.stage} was the last stage), then merged into plain {dtype} weights.",
        "",
        f"Data: `{recipe['data']['source']}`, {data.get('train', '?')} training examples "
        f"({data.get('holdout', '?')} held out; rows read {data.get('rows_read', '?')}, "
        f"dropped {sum(data.get('dropped', {}).values())}).", "",
        *(["| task | acc | fmt | score | n |", "|---|---:|---:|---:|---:|", *rows, ""] if rows else []),
        "## Load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'model = AutoModelForCausalLM.from_pretrained("{out}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{out}")', "```", "",
        "Prompts as in training: the recipe's `format` below. The response is "
        + ("the thinking and the answer between the recipe's tags." if STRATEGIES[recipe["strategy"]].tagged
           else "the reasoning, the separator, then the answer."), "",
        "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", ""])))
