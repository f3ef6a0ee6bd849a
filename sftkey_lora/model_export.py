"""`sftkey-lora export`: a finished run as one model directory to deploy.

The final model as the run trained it: for `sftkey_tag` the stage-2 adapter merged into the
16-bit `stage1-merged/` (never into 4-bit weights, which would re-quantize them), for a
one-stage strategy its adapter merged into the base's weights, in full mode the last stage's
own (fp32 master) weights; written in the dtype asked for, by default the base model's own.
Beside them the tokenizer with the tags, the generation config, a model card and the run's
recipe (`sftkey_recipe.json`, which the lm-eval tasks read to render prompts as in training);
no adapter, no trainable token rows, nothing a server has to understand beyond a plain causal LM.
With `gguf` types, also that model as llama.cpp's GGUF files and an Ollama `Modelfile`; with
`gguf_adapter`, the last stage's base and adapter as a GGUF pair (llama.cpp's `--lora`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .recipe import Recipe
from .rundir.diskfull import disk_full_stops
from .rundir.files import empty_temporary, replace_dir, write_json_atomic, write_text_atomic
from .rundir.layout import EXPORTED_RECIPE, Claim, RunLayout
from .rundir.lock import holding
from .rundir.manifest import write_manifest
from .rundir.record import RunRecord, is_run, recorded_recipe
from .runtime.hardware import ResolvedPrecision, torch_dtype
from .strategies import STRATEGIES
from .train.loading import declared_precision
from .train.plan import FinalModel, plan_run, refuse_damaged


def export_run(run_dir: Path, output: Path | None = None, dtype: ResolvedPrecision | None = None,
               gguf: Sequence[str] = (), gguf_adapter: bool = False) -> Path:
    """Write the run's final model to `output` (default `RUN/final/`) in `dtype` (default the
    dtype the base model's checkpoint declares), and as GGUF files of the `gguf` types; returns
    where."""
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
    refuse_damaged(plan, lambda name: record.status(name) == "complete")
    types = check_gguf(gguf, gguf_adapter, plan.final)
    out = output or layout.export_dir
    with holding(layout.claim), holding(Claim(out, EXPORTED_RECIPE, beside=True)):
        tmp = empty_temporary(out)
        with disk_full_stops("export", out, temporaries=[tmp]):
            model, tokenizer = final_model(plan.final)
            dtype = dtype or declared_precision(recipe.model)
            model = model.to(torch_dtype(dtype))
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json_atomic(tmp / EXPORTED_RECIPE, record.data["recipe"])
            if types:
                name = recipe.name or run_dir.name
                write_ggufs(tmp, types, gguf_adapter, recipe, plan.final, tokenizer, name)
            ggufs = sorted(path.name for path in tmp.glob("*.gguf"))
            write_text_atomic(tmp / "README.md", model_card(record.data, plan.final, out, dtype, ggufs))
            readable_as_umask_allows(tmp)
            write_manifest(tmp)
            replace_dir(tmp, out)
    return out


def check_gguf(types: Sequence[str], adapter: bool, final: FinalModel) -> list[str]:
    """The GGUF types asked for, checked before anything is written; the adapter form only for
    a plain LoRA adapter (llama.cpp's adapter files hold low-rank pairs, not token rows)."""
    from .gguf.convert import check_types

    if adapter and not types:
        raise UserError("--gguf-adapter: give the GGUF type too, e.g. --gguf f16 --gguf-adapter")
    if adapter and final.adapter is None:
        raise UserError("--gguf-adapter: this run trained every weight (full mode); it has no adapter")
    if adapter:
        config = json.loads((final.adapter / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("trainable_token_indices") or config.get("modules_to_save"):
            raise UserError(f"--gguf-adapter: {final.adapter} trains token rows too (format.tags: "
                            "added_tokens), which llama.cpp's adapter files cannot hold; use the merged GGUF")
    return check_types(types) if types else []


def write_ggufs(folder: Path, types: list[str], adapter: bool, recipe: Recipe, final: FinalModel,
                tokenizer: Any, name: str) -> None:
    """`<name>-<type>.gguf` of the model in `folder`, an Ollama Modelfile for the first, and
    with `adapter` the base and the adapter of the last stage as `<name>-base-<type>.gguf` and
    `<name>-adapter-<type>.gguf`."""
    from .gguf.convert import lora_gguf, model_gguf
    from .gguf.ollama import modelfile

    files = [model_gguf(folder, folder / f"{name}-{kind}.gguf", kind, name, recipe.strategy)
             for kind in types]
    write_text_atomic(folder / "Modelfile", modelfile(files[0].name, recipe.format, tokenizer))
    if adapter:
        base = local_model_dir(final.base.name_or_path, final.base.revision)
        model_gguf(base, folder / f"{name}-base-{types[0]}.gguf", types[0], f"{name}-base", recipe.strategy)
        lora_gguf(final.adapter, base, folder / f"{name}-adapter-{types[0]}.gguf", types[0])


def local_model_dir(name_or_path: str, revision: str | None) -> Path:
    """A model's directory on this machine: the path itself, else its copy in the hub cache."""
    from huggingface_hub import snapshot_download

    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    return Path(snapshot_download(name_or_path, revision=revision))


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


def model_card(record: dict[str, Any], final: FinalModel, out: Path, dtype: ResolvedPrecision,
               ggufs: Sequence[str] = ()) -> str:
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
        *gguf_section(ggufs),
        "Prompts as in training: the recipe's `format` below. The response is "
        + ("the thinking and the answer between the recipe's tags." if STRATEGIES[recipe["strategy"]].tagged
           else "the reasoning, the separator, then the answer."), "",
        "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", ""])))


def gguf_section(ggufs: Sequence[str]) -> list[str]:
    """How to run the GGUF files of the export (none: nothing)."""
    if not ggufs:
        return []
    models = [name for name in ggufs if "-adapter-" not in name and "-base-" not in name]
    pair = [name for name in ggufs if "-base-" in name] + [name for name in ggufs if "-adapter-" in name]
    return ["## GGUF (llama.cpp, Ollama)", "", "Converted by llama.cpp's own converter: "
            + ", ".join(f"`{name}`" for name in ggufs) + ".", "", "```bash",
            f"llama-cli -m {models[0]} -n 256 --temp 0",
            *([f"llama-cli -m {pair[0]} --lora {pair[1]} -n 256 --temp 0"] if len(pair) == 2 else []),
            "ollama create my-model -f Modelfile && ollama run my-model",
            f"sftkey-lora eval {models[0]}   # the recipe's tasks, through llama.cpp", "```", ""]
