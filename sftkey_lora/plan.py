"""The resolved plan of a run: per stage, its labels, base, adapter and TrainingArguments.

Both `run --dry-run` and the real run read this one plan, so what the dry run shows is
what training uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hardware import ResolvedPrecision, cuda_available, resolve_precision
from .recipe import ModelConfig, Recipe, StageConfig, TrainingConfig
from .strategies import STRATEGIES, LabelKind

MERGED_DIR = "stage1-merged"


def full_mode(recipe: Recipe) -> bool:
    """Every weight trains (no adapters, no merge); stage 2 starts from the stage-1 weights."""
    return recipe.training.mode == "full"


@dataclass(frozen=True)
class StagePlan:
    name: str
    labels: LabelKind
    model: ModelConfig  # the recipe's model, or for stage 2 the merged stage-1 model
    config: StageConfig
    precision: ResolvedPrecision
    training_args: dict[str, Any]  # TrainingArguments field names and values

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "labels": self.labels, "base": self.model.name_or_path,
            "lora": None if self.config.training.mode == "full" else self.config.lora.model_dump(mode="json"),
            "precision": self.precision, "training_args": self.training_args,
        }


def plan_stages(recipe: Recipe, run_dir: Path) -> list[StagePlan]:
    plans = []
    for index, spec in enumerate(STRATEGIES[recipe.strategy].stages):
        config = recipe.stage(spec.name)
        precision = resolve_precision(config.training.precision)
        base = "stage1" if full_mode(recipe) else MERGED_DIR
        model = recipe.model if index == 0 else recipe.model.model_copy(
            update={"name_or_path": str(run_dir / base), "revision": None})
        args = training_arguments(config.training, precision, run_dir, cuda=cuda_available())
        if recipe.model.backend == "unsloth":
            args["gradient_checkpointing"] = False  # unsloth's own, set up with its adapter
        plans.append(StagePlan(spec.name, spec.labels, model, config, precision, args))
    return plans


def training_arguments(cfg: TrainingConfig, precision: ResolvedPrecision, output_dir: Path,
                       cuda: bool = False) -> dict[str, Any]:
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
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "seed": cfg.seed,
        "train_sampling_strategy": "random" if cfg.shuffle else "sequential",
        "logging_strategy": "steps",
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "report_to": cfg.report_to or "none",
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": "non_padding",
        "average_tokens_across_devices": True,
        "disable_tqdm": True,
        "dataloader_pin_memory": cuda,  # only a GPU has pinned memory to use
        # Without a GPU, say so: only then do several processes (torchrun) train as one, over gloo.
        "use_cpu": not cuda,
    }


def dry_run(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    return {
        "recipe": recipe.model_dump(mode="json"),
        "output": str(run_dir),
        "stages": [plan.as_json() for plan in plan_stages(recipe, run_dir)],
    }
