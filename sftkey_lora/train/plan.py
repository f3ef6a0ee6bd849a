"""The plan of a run: every step, and all that each step needs, decided here and nowhere else.

`run --dry-run` prints it, `run` executes each of its steps that is not complete, and
evaluation loads the model it names as final. Which stages run with which labels, whether an
adapter or every weight trains, what each stage loads, whether the stage-1 adapter is merged
(and into what), whether tags are added tokens and whose rows train: all read off the
recipe once, here. Making a plan loads no model and no data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..recipe import EvalConfig, ModelConfig, Recipe, StageConfig, TrainingConfig
from ..rundir.layout import EVAL_STEP, MERGE_STEP, RunLayout
from ..rundir.manifest import damaged
from ..rundir.outcomes import EvalOutcome
from ..runtime.hardware import ResolvedPrecision, cuda_available, resolve_precision
from ..strategies import STRATEGIES, LabelKind
from ..tags import Tags

TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class TokenizerPlan:
    model: ModelConfig  # the recipe's model, whose tokenizer is the run's
    add_tags: bool  # the four tags become added tokens (saved with every stage's weights)
    tags: Tags  # the recipe's tag strings


@dataclass(frozen=True)
class StageStep:
    name: str
    labels: LabelKind
    base: ModelConfig  # what the stage loads: the recipe's model, or what the stage before made
    config: StageConfig  # the recipe's `lora` and `training` with the stage's own keys over them
    full: bool  # every weight trains; else a fresh adapter over `base`
    tag_rows: bool  # the added tag tokens' embedding (and untied head) rows train with the adapter
    precision: ResolvedPrecision  # what the stage computes in (the Trainer's autocast)
    # What the model's weights are loaded and kept in. In full mode fp32 master weights: an
    # AdamW step of lr 5e-6 on a bf16 weight of 0.02 is below its spacing (about 1e-4) and
    # rounds away. With adapters the base is frozen (peft keeps the adapter itself in fp32).
    weights: ResolvedPrecision
    training_args: dict[str, Any]  # TrainingArguments field names and values
    output: Path  # the adapter, or in full mode the whole model (in `weights`), with the tokenizer
    tensorboard: Path | None = None  # where the stage's TensorBoard events go, where asked for

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "labels": self.labels, "base": self.base.name_or_path,
                "lora": None if self.full else self.config.lora.model_dump(mode="json"),
                "precision": self.precision, "weights": self.weights, "tag_rows": self.tag_rows,
                "output": str(self.output),
                "tensorboard": self.tensorboard and str(self.tensorboard),
                "training_args": self.training_args}


@dataclass(frozen=True)
class MergeStep:
    """The stage-1 adapter merged into 16-bit weights, the base of stage 2."""

    model: ModelConfig  # the base stage 1 trained over
    adapter: Path
    output: Path
    choice: str  # `merge.base`: auto, original or nf4
    precision: ResolvedPrecision  # as stage 2 loads the result
    probe_batch_size: int
    next_base: ModelConfig  # the result, as stage 2 loads it (quantized again or not)
    name: str = MERGE_STEP

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "adapter": str(self.adapter), "output": str(self.output),
                "base": self.choice, "stage2_quantization": self.next_base.quantization}


@dataclass(frozen=True)
class EvalStep:
    tasks: list[str]
    limit: int | None
    settings: EvalConfig
    name: str = EVAL_STEP

    def done_by(self, outcome: EvalOutcome | None) -> bool:
        """Whether a recorded evaluation measured these tasks with these settings."""
        return outcome is not None and (outcome.tasks, outcome.limit, outcome.eval) == (
            self.tasks, self.limit, self.settings.model_dump(mode="json"))


@dataclass(frozen=True)
class FinalModel:
    """The model as the last stage trained it: what evaluation loads."""

    stage: str
    base: ModelConfig  # in full mode, the stage's own saved model
    adapter: Path | None  # None in full mode
    tokenizer: Path  # saved beside the weights, tags included
    precision: ResolvedPrecision


TrainingStep = StageStep | MergeStep


@dataclass(frozen=True)
class RunPlan:
    layout: RunLayout
    tagged: bool  # the response is rendered with the tags
    tokenizer: TokenizerPlan
    holdout_seed: int  # the held-out examples are drawn with the first stage's seed
    steps: tuple[TrainingStep, ...]  # in the order they run
    final: FinalModel
    evaluation: EvalStep | None  # None: no task to evaluate on

    @property
    def stages(self) -> list[StageStep]:
        return [step for step in self.steps if isinstance(step, StageStep)]

    def as_json(self, recipe: Recipe) -> dict[str, Any]:
        """The dry run: the resolved recipe and every step, without loading anything."""
        names = [step.name for step in self.steps] + ([EVAL_STEP] if self.evaluation else [])
        return {"recipe": recipe.model_dump(mode="json"), "output": str(self.layout.root),
                "stages": [stage.as_json() for stage in self.stages], "steps": names,
                "merge": next((step.as_json() for step in self.steps if isinstance(step, MergeStep)), None),
                "tokenizer": {"model": self.tokenizer.model.name_or_path,
                              "add_tags": self.tokenizer.add_tags}}


def damaged_output(plan: RunPlan, complete: Callable[[str], bool]) -> tuple[int, Path] | None:
    """The first complete step whose output changed since it was written (a file cut short,
    zeroed or garbled): its index in the plan and the file."""
    for i, step in enumerate(plan.steps):
        if not complete(step.name):
            continue
        broken = damaged(step.output) if step.output.is_dir() else ["."]
        if broken:
            return i, step.output / broken[0]
    return None


def refuse_damaged(plan: RunPlan, complete: Callable[[str], bool]) -> None:
    """What reads a finished run (export, `eval RUN`) never reads a damaged output."""
    found = damaged_output(plan, complete)
    if found is not None:
        raise UserError(f"{found[1]}: damaged since it was written; run the recipe again with --output "
                        f"{plan.layout.root}, which redoes {plan.steps[found[0]].name} and what follows")


def plan_tokenizer(recipe: Recipe) -> TokenizerPlan:
    """Tags become added tokens only where the strategy renders them: `sft` gets no dead rows."""
    adds = recipe.format.tags == "added_tokens" and STRATEGIES[recipe.strategy].tagged
    return TokenizerPlan(recipe.model, add_tags=adds, tags=recipe.format.tag_strings)


def plan_run(recipe: Recipe, layout: RunLayout) -> RunPlan:
    """Every step of the recipe's strategy. A later stage continues from the stage before: in
    full mode from its weights; with adapters from its adapter merged into 16-bit weights, by
    a merge step between the two."""
    full = recipe.training.mode == "full"
    tokenizer = plan_tokenizer(recipe)
    steps: list[TrainingStep] = []
    previous: StageStep | None = None
    for spec in STRATEGIES[recipe.strategy].stages:
        config = recipe.stage(spec.name)
        precision = resolve_precision(config.training.precision)
        base = recipe.model
        if previous is not None and full:
            base = _saved(recipe.model, previous.output)
        elif previous is not None:
            base = _saved(recipe.model, layout.merged_dir)
            if not recipe.merge.requantize:
                base = base.model_copy(update={"quantization": "none"})
            steps.append(MergeStep(previous.base, previous.output, layout.merged_dir, recipe.merge.base,
                                   precision, probe_batch_size=config.training.batch_size, next_base=base))
        args = training_arguments(config.training, precision, layout.root, cuda=cuda_available(),
                                  backend=recipe.model.backend)
        previous = StageStep(spec.name, spec.labels, base, config, full,
                             tag_rows=tokenizer.add_tags and previous is None and not full,
                             precision=precision, weights="fp32" if full else precision, training_args=args,
                             output=layout.stage_dir(spec.name),
                             tensorboard=layout.tensorboard_dir(spec.name)
                             if TENSORBOARD in config.training.report_to else None)
        steps.append(previous)
    assert previous is not None  # every strategy has a stage
    return RunPlan(layout, STRATEGIES[recipe.strategy].tagged, tokenizer,
                   holdout_seed=recipe.stage(steps[0].name).training.seed, steps=tuple(steps),
                   final=_final_model(previous), evaluation=plan_evaluation(recipe))


def shares_first_stage(a: RunPlan, b: RunPlan) -> bool:
    """Whether two runs' first stages train the same thing from the same data (their folders
    aside), so that one's output may stand for the other's."""
    def trained(plan: RunPlan) -> Any:
        stage = plan.stages[0].as_json()
        stage["training_args"] = {**stage["training_args"], "output_dir": None}
        folders = {"output": None, "tensorboard": None}
        return {**stage, **folders}, plan.tagged, plan.tokenizer, plan.holdout_seed

    return trained(a) == trained(b)


def _saved(model: ModelConfig, folder: Path) -> ModelConfig:
    """The recipe's model settings (quantization, backend) over weights the run wrote."""
    return model.model_copy(update={"name_or_path": str(folder), "revision": None})


def _final_model(last: StageStep) -> FinalModel:
    if last.full:
        return FinalModel(last.name, _saved(last.base, last.output), None, last.output, last.precision)
    return FinalModel(last.name, last.base, last.output, last.output, last.precision)


def plan_evaluation(recipe: Recipe, tasks: list[str] | None = None,
                    limit: int | None = None) -> EvalStep | None:
    """The evaluation of the final model: the recipe's tasks and limit unless given."""
    tasks = tasks if tasks is not None else recipe.eval_tasks()
    if not tasks:
        return None
    return EvalStep(tasks, limit if limit is not None else recipe.eval.limit, recipe.eval)


def check_reporters(names: list[str]) -> None:
    """Every `training.report_to` integration known to transformers and installed, checked
    before the run loads anything."""
    if not names:
        return
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(INTEGRATION_TO_CALLBACK)
            raise UserError(f"training.report_to: unknown {name!r} (known: {known})")
        if name not in get_available_reporting_integrations():
            package = "'sftkey-lora[tensorboard]'" if name == TENSORBOARD else name
            raise UserError(f"training.report_to: {name} is not installed; pip install {package}")


def training_arguments(cfg: TrainingConfig, precision: ResolvedPrecision, output_dir: Path,
                       cuda: bool = False, backend: str = "transformers") -> dict[str, Any]:
    """Recipe `training` keys mapped to TrainingArguments. Checkpoints go to the run directory
    itself (`checkpoint-N/`); the stage's own callbacks draw the progress bar."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps if cfg.max_steps is not None else -1,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup,
        "weight_decay": cfg.weight_decay,
        "optim": cfg.optimizer,
        "max_grad_norm": cfg.max_grad_norm,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        # unsloth sets up its own checkpointing with its adapter.
        "gradient_checkpointing": cfg.gradient_checkpointing and backend != "unsloth",
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "seed": cfg.seed,
        "train_sampling_strategy": "random" if cfg.shuffle else "sequential",
        "logging_strategy": "steps",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        # TensorBoard is the stage's own callback (`tensorboard_dir`), after the held-out probe.
        "report_to": [name for name in cfg.report_to if name != TENSORBOARD] or "none",
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": "non_padding",
        "average_tokens_across_devices": True,
        "disable_tqdm": True,
        "dataloader_pin_memory": cuda,  # only a GPU has pinned memory to use
        # Without a GPU, say so: only then do several processes (torchrun) train as one, over gloo.
        "use_cpu": not cuda,
    }
