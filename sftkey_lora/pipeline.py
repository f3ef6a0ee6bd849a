"""`sftkey-lora run`: every step of the plan that is not complete, executed and recorded.

The plan (`train/plan.py`) decides the steps; this module only runs them, in order:
for sftkey_tag stage1 -> merge -> stage2, then the evaluation. Completed steps are skipped
when the same command runs again; a stage interrupted mid-way resumes from its last
`checkpoint-N/`.
"""

from __future__ import annotations

import logging
import random
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

from .data import load_examples
from .errors import UserError
from .evaluation.harness import damaged_evaluation
from .evaluation.runner import evaluate_run
from .output import RESULT, logged_to
from .plots import plot_stage_losses
from .prep.collate import Collator, batches, pad_id
from .prep.masks import Encoded
from .prep.prepare import encode_examples
from .recipe import Recipe
from .rundir.diskfull import disk_full_stops
from .rundir.files import remove_checkpoints, remove_partial_checkpoints
from .rundir.layout import EVAL_STEP, RunLayout
from .rundir.lock import holding
from .rundir.outcomes import EvalOutcome, summary_table
from .rundir.record import RunRecord
from .runtime.distributed import is_main, wait_for_everyone
from .train.plan import MergeStep, RunPlan, StageStep, TrainingStep, check_reporters, damaged_output, plan_run

log = logging.getLogger(__name__)


def run_recipe(recipe: Recipe, run_dir: Path, fresh: bool = False) -> RunRecord:
    """Execute every planned step not yet complete, then evaluate unless this evaluation is
    recorded; the run directory is held throughout (`rundir.lock`) and its messages go to
    `run.log`. With several processes all train; the main one alone merges, evaluates, reports."""
    layout = RunLayout(run_dir)
    with holding(layout.claim):
        record = RunRecord.open(layout, recipe, fresh)
        with logged_to(layout.log_file) if is_main() else nullcontext(), disk_full_stops("run", run_dir):
            _run_steps(recipe, record)
    return record


def _run_steps(recipe: Recipe, record: RunRecord) -> None:
    plan = plan_run(recipe, record.layout)
    _redo_damaged(plan, record)  # in every process: each decides the same, the main one records it
    log.info(f"{record.layout.root}: {recipe.strategy} on {recipe.model.name_or_path}, "
             f"steps {' -> '.join(step.name for step in plan.steps)}")
    pending = [step for step in plan.steps if record.status(step.name) != "complete"]
    check_reporters(sorted({name for step in pending if isinstance(step, StageStep)
                            for name in step.config.training.report_to}))
    if not pending:
        log.info(f"{record.layout.root}: every stage is complete (--fresh starts over)")
    execution = _Execution(recipe, plan, record)
    for step in pending:
        execution.run(step)
    summary = summary_table(record.steps)
    log.log(RESULT, summary)
    evaluation = plan.evaluation
    if not is_main():
        return
    evaluated = record.outcome(EVAL_STEP, EvalOutcome)
    if evaluation is not None and not (evaluation.done_by(evaluated) and _whole(evaluated, record)):
        evaluate_run(recipe, record, evaluation, training=summary)
    elif evaluation is None and recipe.eval.tasks == "auto":
        log.info("eval: skipped; set eval.path to a test file in the data source's schema to evaluate on it")


def _redo_damaged(plan: RunPlan, record: RunRecord) -> None:
    """A complete step whose output changed since it was written (a file cut short, zeroed or
    garbled) is done again, and every step after it."""
    found = damaged_output(plan, lambda name: record.status(name) == "complete")
    if found is not None:
        again = [later.name for later in plan.steps[found[0]:]] + [EVAL_STEP]
        log.warning(f"{found[1]}: damaged since it was written; {', '.join(again)} done again")
        record.forget(again)


def _whole(evaluated: EvalOutcome | None, record: RunRecord) -> bool:
    """The recorded evaluation's files are as it wrote them; else it is done again."""
    broken = damaged_evaluation(record.layout, evaluated.metrics) if evaluated else None
    if broken:
        log.warning(f"{broken}: damaged since it was written; the evaluation is done again")
    return broken is None


class _Execution:
    """What the steps of one run share, loaded once and only if a step needs it."""

    def __init__(self, recipe: Recipe, plan: RunPlan, record: RunRecord) -> None:
        self.recipe, self.plan, self.record = recipe, plan, record

    def run(self, step: TrainingStep) -> None:
        if isinstance(step, MergeStep):
            self._merge(step)
        else:
            self._train(step)

    @cached_property
    def tokenizer(self) -> tuple[Any, list[int]]:
        """The run's tokenizer and the ids of the tags it adds as tokens."""
        from .train.loading import run_tokenizer

        return run_tokenizer(self.plan.tokenizer)

    @cached_property
    def data(self) -> tuple[list[Encoded], list[Encoded]]:
        """(train, holdout): encoded examples, `data.holdout` of them held out."""
        examples, report = load_examples(self.recipe.data, tags=self.recipe.format.tag_strings)
        rows = encode_examples(examples, self.tokenizer[0], self.recipe.format, self.plan.tagged, report,
                               cache=self.recipe.data.cache)
        held = self.recipe.data.holdout
        if len(rows) <= held:
            raise UserError(f"data.holdout: {held} held-out examples leave none of the {len(rows)} usable "
                            f"examples to train on; lower it or add data\n{report.format()}")
        train, holdout = split_holdout(rows, held, self.plan.holdout_seed)
        self.record.update(data={**report.to_dict(), "train": len(train), "holdout": len(holdout)})
        return train, holdout

    def _train(self, step: StageStep) -> None:
        from .train.stage import StageInputs, train_stage

        layout = self.plan.layout
        if is_main():
            if self.record.status(step.name) != "running":
                remove_checkpoints(layout)  # left by an earlier stage, never this one's
            for name in remove_partial_checkpoints(layout):
                log.warning(f"{step.name}: {name} was cut short while being saved, or damaged since; "
                            "removed, resuming from the one before")
        wait_for_everyone()  # every process resumes from the same checkpoint, or none
        self.record.start(step.name)
        tokenizer, tag_ids = self.tokenizer
        train, holdout = self.data
        outcome = train_stage(step, StageInputs(tokenizer, train, holdout, tag_ids), layout)
        if is_main():
            plot_stage_losses(outcome.log_history, step.name, layout.stage_plot(step.name))
        self.record.complete(step.name, outcome)  # written by the main process
        if is_main():
            remove_checkpoints(layout)
        wait_for_everyone()

    def _merge(self, step: MergeStep) -> None:
        log.info(f"merging stage1 into 16-bit weights ({step.choice} base) ...")
        if is_main():  # the main process merges; the others wait for its output
            from .train.merge import merge_stage1

            tokenizer = self.tokenizer[0]
            probe = list(batches(self.data[1], step.probe_batch_size,
                                 Collator(pad_id(tokenizer), "full", with_segments=True)))
            self.record.start(step.name)
            with disk_full_stops(step.name, self.plan.layout.root):
                outcome = merge_stage1(step, tokenizer, probe)
            self.record.complete(step.name, outcome)
        wait_for_everyone()


def split_holdout(rows: list[Encoded], n: int, seed: int) -> tuple[list[Encoded], list[Encoded]]:
    """(train, holdout): `n` rows drawn with `seed`, the same in every run of a recipe."""
    picked = set(random.Random(seed).sample(range(len(rows)), n))
    return ([row for i, row in enumerate(rows) if i not in picked],
            [row for i, row in enumerate(rows) if i in picked])
