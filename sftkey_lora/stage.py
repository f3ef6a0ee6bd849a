"""Train one stage: a fresh LoRA adapter on its base, the stage's labels, the Trainer's loop.

The Trainer is configured, not subclassed: the loss (`compute_loss_func`) and the
collator are passed in. Checkpoints are `checkpoint-N/` folders in the run directory; a
stage that finds some resumes from the last one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .callbacks import KEY_KEY, THINKING_KEY, SegmentLossProbe, StageProgress
from .collate import Collator, batches, pad_id
from .distributed import is_main, sharded, wait_for_everyone
from .guards import LossGuard, disk_full_stops
from .hardware import peak_memory, reset_peak_memory
from .loading import load_model
from .lora import attach_lora
from .loss import LabelledLogitsLoss, causal_lm_loss, projects_like_the_model
from .masks import Encoded
from .plan import StagePlan
from .rundir import last_whole_checkpoint, replace_dir
from .strategies import LabelKind


@dataclass(frozen=True)
class StageInputs:
    tokenizer: Any
    train: list[Encoded]
    holdout: list[Encoded]
    new_token_ids: list[int]  # tag tokens added to the vocabulary, whose rows must train


def train_stage(plan: StagePlan, inputs: StageInputs, run_dir: Path) -> dict[str, Any]:
    """Train, save the adapter to `run_dir/<stage>/` atomically, and report what happened."""
    from transformers import TrainerState, set_seed

    # Seeded before the model exists: new embedding rows and the adapter's initial weights
    # are drawn at creation, before the Trainer would seed anything.
    set_seed(plan.config.training.seed)
    reset_peak_memory()
    started = time.perf_counter()
    tokenizer = inputs.tokenizer
    full = plan.config.training.mode == "full"
    model = _stage_model(plan, inputs, vocab_size=len(tokenizer))
    probe_collate = Collator(pad_id(tokenizer), plan.labels, with_segments=True)
    probe = SegmentLossProbe(list(batches(inputs.holdout, plan.config.training.batch_size, probe_collate)))
    loss = _loss_kind(plan, model, probe.batches[0])
    trainer = stage_trainer(model, plan.training_args, inputs.train, tokenizer, plan.labels,
                            loss=loss, packed=plan.config.training.packing,
                            callbacks=[probe, StageProgress(plan.name)], guard=LossGuard(plan.name, run_dir))
    resume = last_whole_checkpoint(run_dir)
    before = TrainerState.load_from_json(f"{resume}/trainer_state.json") if resume else TrainerState()
    with disk_full_stops(plan.name, run_dir):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        _save(trainer, tokenizer, run_dir / plan.name, full)
    seconds = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen - before.num_input_tokens_seen
    history = trainer.state.log_history
    probes = [entry for entry in history if KEY_KEY in entry]
    return {
        "labels": plan.labels, "steps": trainer.state.global_step,
        "logits": LOGITS[loss],
        "resumed_from": Path(resume).name if resume else None,
        "seconds": round(seconds, 1), "train_seconds": round(result.metrics["train_runtime"], 1),
        "tokens": int(tokens), "tokens_per_second": round(tokens / result.metrics["train_runtime"], 1),
        **peak_memory(), "train_loss": round(result.training_loss, 5),
        "heldout_key_loss": {"before": probes[0][KEY_KEY], "after": probes[-1][KEY_KEY]},
        "heldout_thinking_loss": {"before": probes[0][THINKING_KEY], "after": probes[-1][THINKING_KEY]},
        "log_history": history,
    }


LossKind = Literal["labelled", "full", "model"]
LOGITS: dict[LossKind, str] = {"labelled": "labelled positions", "full": "every position",
                               "model": "the backend's own loss"}


def _stage_model(plan: StagePlan, inputs: StageInputs, vocab_size: int) -> Any:
    """The model a stage trains: the base with a fresh adapter (from unsloth when the recipe's
    backend is unsloth), or in full mode the whole model."""
    training = plan.config.training
    if plan.model.backend == "unsloth":
        from .unsloth_backend import unsloth_lora_model

        longest = max(len(row.input_ids) for row in inputs.train)
        return unsloth_lora_model(plan.model, plan.config.lora, plan.precision, vocab_size=vocab_size,
                                  max_length=longest, seed=training.seed,
                                  gradient_checkpointing=training.gradient_checkpointing)
    model = load_model(plan.model, plan.precision, vocab_size=vocab_size)
    if training.mode == "full":
        return model
    return attach_lora(model, plan.config.lora, new_token_ids=inputs.new_token_ids,
                       gradient_checkpointing=training.gradient_checkpointing)


def _loss_kind(plan: StagePlan, model: Any, batch: dict[str, Any]) -> LossKind:
    """Logits only where labels are, unless unsloth computes the loss with its own kernels,
    this architecture changes logits after its head, or the head's weights are sharded (whole
    only inside the model's forward)."""
    if plan.model.backend == "unsloth":
        return "model"
    if sharded() or not projects_like_the_model(model, batch, model.get_output_embeddings()):
        return "full"
    return "labelled"


def stage_trainer(model: Any, training_args: dict[str, Any], train: list[Encoded], tokenizer: Any,
                  labels: LabelKind, *, loss: LossKind, packed: bool = False,
                  callbacks: Sequence[Any] = (), guard: LossGuard | None = None) -> Any:
    """The transformers Trainer of a stage, configured rather than subclassed: our collator
    (the stage's labels) and the loss: ours over labelled positions only, ours over full
    logits, or the model's own (given the labels); `guard` stops at a NaN or inf loss."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    loss_func = {"labelled": LabelledLogitsLoss(model.get_output_embeddings()),
                 "full": causal_lm_loss, "model": None}[loss]
    if guard is not None:
        callbacks = [*callbacks, guard]
        if loss_func is None:
            guard.watch(model)
        else:
            loss_func = guard.wrap(loss_func)
    trainer = Trainer(
        model=model, args=TrainingArguments(**training_args), train_dataset=train,
        data_collator=Collator(pad_id(tokenizer), labels, hidden_only=loss == "labelled", packed=packed),
        processing_class=tokenizer, callbacks=list(callbacks), compute_loss_func=loss_func,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _save(trainer: Any, tokenizer: Any, final: Path, full: bool) -> None:
    """The stage's weights and tokenizer, written under a temporary name, then renamed."""
    tmp = final.with_name(f".{final.name}.tmp")
    if full:
        trainer.save_model(str(tmp))  # every process takes part (sharded weights); the main one writes
    elif is_main():
        # Added tag rows are saved as the adapter's trainable tokens; the whole resized
        # embedding (a GB for a 7B model) would only repeat them.
        trainer.model.save_pretrained(tmp, save_embedding_layers=False)
    if is_main():
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, final)
    wait_for_everyone()

