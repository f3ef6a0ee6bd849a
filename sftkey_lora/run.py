"""`sftkey-lora run`: every stage of a strategy, resumable, recorded in `run.json`.

sftkey_tag: stage1 (adapter on the 4-bit base, full labels) -> merge into 16-bit
`stage1-merged/` -> stage2 (fresh adapter on the 4-bit merged model, key labels only)
-> evaluation on the recipe's lm-eval tasks (`eval`).
Completed steps are skipped when the same command runs again; a stage interrupted
mid-way resumes from its last `checkpoint-N/`.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .collate import Collator, batches, pad_id
from .data import load_examples
from .distributed import is_main, wait_for_everyone
from .errors import UserError
from .evaluation.runner import EVAL_STEP, evaluate_run
from .guards import disk_full_stops
from .loading import load_tokenizer
from .masks import Encoded, encode_examples
from .merge import merge_stage1
from .plan import MERGED_DIR, StagePlan, full_mode, plan_stages
from .plots import plot_stage_losses
from .recipe import Recipe
from .rundir import RunRecord, remove_checkpoints, remove_partial_checkpoints
from .strategies import STRATEGIES
from .tags import ALL_TAGS

MERGE_STEP = "merge"


def run_recipe(recipe: Recipe, run_dir: Path, fresh: bool = False,
               say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> RunRecord:
    """Train every stage not yet complete, then evaluate unless this evaluation is recorded.
    With several processes all train; the main one alone merges, evaluates and reports."""
    if not is_main():
        say = _silent
    record = RunRecord.open(run_dir, recipe, fresh)
    plans = plan_stages(recipe, run_dir)
    merges = len(plans) > 1 and not full_mode(recipe)
    steps = [plan.name for plan in plans] + ([MERGE_STEP] if merges else [])
    if all(record.status(step) == "complete" for step in steps):
        say(f"{run_dir}: every stage is complete (--fresh starts over)")
    else:
        _train_stages(recipe, plans, record, say)
    summary = summary_table(record)
    say(summary)
    if not is_main():
        return record
    if recipe.eval_tasks() and not _evaluated(recipe, record):
        evaluate_run(recipe, record, training=summary, say=say)
    elif recipe.data.source == "jsonl" and recipe.eval.tasks == "auto" and recipe.eval.path is None:
        say("eval: skipped; set eval.path to a test file in the jsonl schema to evaluate on it")
    return record


def _silent(text: str) -> None:
    """What processes other than the main one say: nothing, the main one says it all."""


def _train_stages(recipe: Recipe, plans: list[StagePlan], record: RunRecord,
                  say: Callable[[str], None]) -> None:
    tokenizer = load_tokenizer(recipe.model, recipe.format)
    train, holdout = _training_data(recipe, tokenizer, record)
    adds_tags = recipe.format.tags == "added_tokens" and STRATEGIES[recipe.strategy].tagged
    new_ids = tokenizer.convert_tokens_to_ids(list(ALL_TAGS)) if adds_tags else []
    for plan in plans:
        if plan.name == "stage2" and not full_mode(recipe) and record.status(MERGE_STEP) != "complete":
            _merge(recipe, plan, record, tokenizer, holdout, say)
        if record.status(plan.name) == "complete":
            continue
        _train(recipe, plan, record, tokenizer, train, holdout, new_ids if plan.name == "stage1" else [], say)


def _evaluated(recipe: Recipe, record: RunRecord) -> bool:
    """Whether run.json records a finished evaluation with the recipe's present settings."""
    step = record.data["steps"].get(EVAL_STEP, {})
    recorded = (step.get("tasks"), step.get("limit"), step.get("eval"))
    wanted = (recipe.eval_tasks(), recipe.eval.limit, recipe.eval.model_dump(mode="json"))
    return step.get("status") == "complete" and recorded == wanted


def _training_data(recipe: Recipe, tokenizer: Any, record: RunRecord) -> tuple[list[Encoded], list[Encoded]]:
    """Encoded examples, minus `data.holdout` of them drawn with the stage-1 seed."""
    examples, report = load_examples(recipe.data)
    rows = encode_examples(examples, tokenizer, recipe.format, STRATEGIES[recipe.strategy].tagged, report)
    held = recipe.data.holdout
    if len(rows) <= held:
        raise UserError(f"data.holdout: {held} held-out examples leave none of the {len(rows)} usable "
                        f"examples to train on; lower it or add data\n{report.format()}")
    train, holdout = split_holdout(rows, held, recipe.stage("stage1").training.seed)
    record.update(data={**report.to_dict(), "train": len(train), "holdout": len(holdout)})
    return train, holdout


def split_holdout(rows: list[Encoded], n: int, seed: int) -> tuple[list[Encoded], list[Encoded]]:
    """(train, holdout): `n` rows drawn with `seed`, the same in every run of a recipe."""
    picked = set(random.Random(seed).sample(range(len(rows)), n))
    return ([row for i, row in enumerate(rows) if i not in picked],
            [row for i, row in enumerate(rows) if i in picked])


def _train(recipe: Recipe, plan: StagePlan, record: RunRecord, tokenizer: Any, train: list[Encoded],
           holdout: list[Encoded], new_ids: list[int], say: Callable[[str], None]) -> None:
    from .stage import StageInputs, train_stage

    if is_main():
        if record.status(plan.name) != "running":
            remove_checkpoints(record.run_dir)  # left by an earlier stage, never this one's
        for name in remove_partial_checkpoints(record.run_dir):
            say(f"{plan.name}: {name} was cut short while being saved; removed, resuming from the one before")
    wait_for_everyone()  # every process resumes from the same checkpoint, or none
    record.update_step(plan.name, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if plan.model != recipe.model:  # stage 2 reads the merged model's own tokenizer
        tokenizer = load_tokenizer(plan.model, recipe.format)
    inputs = StageInputs(tokenizer, train, holdout, new_ids)
    outcome = train_stage(plan, inputs, record.run_dir)
    plot = record.run_dir / "plots" / f"{plan.name}_loss.png"
    if is_main():
        plot_stage_losses(outcome["log_history"], plan.name, plot)
    record.update_step(plan.name, status="complete", **outcome)  # written by the main process
    if is_main():
        remove_checkpoints(record.run_dir)
    wait_for_everyone()


def _merge(recipe: Recipe, plan: StagePlan, record: RunRecord, tokenizer: Any, holdout: list[Encoded],
           say: Callable[[str], None]) -> None:
    say(f"merging stage1 into 16-bit weights ({recipe.merge.base} base) ...")
    if not is_main():  # the main process merges; the others wait for stage1-merged/
        wait_for_everyone()
        record.update_step(MERGE_STEP, status="complete")
        return
    started = time.perf_counter()
    probe = list(batches(holdout, plan.config.training.batch_size, Collator(pad_id(tokenizer), "full")))
    with disk_full_stops(MERGE_STEP, record.run_dir):
        outcome = merge_stage1(recipe.model, record.run_dir / "stage1", record.run_dir / MERGED_DIR,
                               tokenizer, probe, plan.precision, recipe.merge.base)
    seconds = round(time.perf_counter() - started, 1)
    record.update_step(MERGE_STEP, status="complete", seconds=seconds, **outcome)
    wait_for_everyone()


def summary_table(record: RunRecord) -> str:
    """Per step: status, wall time, training tokens/s, peak memory, held-out key loss."""
    rows = [("step", "status", "time", "tokens/s", "peak memory", "held-out key loss")]
    for name, step in record.data["steps"].items():
        if name == EVAL_STEP:
            continue
        if name == MERGE_STEP:
            kl = ", ".join(f"{k} {v:.3g}" for k, v in step.get("kl", {}).items())
            rows.append((name, step.get("status", ""), f"{step.get('seconds', 0):.0f} s", "",
                         "", f"KL {kl} -> {step.get('base', '?')}"))
            continue
        key = step.get("heldout_key_loss", {})
        rows.append((name, step.get("status", ""), f"{step.get('seconds', 0):.0f} s",
                     f"{step.get('tokens_per_second', 0):,.0f}", f"{step.get('peak_memory_mb', 0):,.0f} MB",
                     f"{key.get('before', float('nan')):.3f} -> {key.get('after', float('nan')):.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)

