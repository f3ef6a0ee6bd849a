"""Train one stage: a fresh LoRA adapter on its base, the stage's labels, the Trainer's loop.

The Trainer is configured, not subclassed: the loss (`compute_loss_func`) and the
collator are passed in. Checkpoints are `checkpoint-N/` folders in the run directory; a
stage that finds some resumes from the last one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..prep.collate import Collator, batches, pad_id
from ..prep.masks import Encoded
from ..rundir.diskfull import disk_full_stops
from ..rundir.files import empty_temporary, last_whole_checkpoint, replace_dir
from ..rundir.layout import KEY_LOSS, THINKING_LOSS, RunLayout, temporary
from ..rundir.manifest import write_manifest
from ..rundir.outcomes import Change, StageOutcome
from ..runtime.distributed import is_main, wait_for_everyone
from ..runtime.hardware import peak_memory, reset_peak_memory
from ..strategies import LabelKind
from .callbacks import AlreadyTrained, CheckpointManifest, FinishedCheckpoint, SegmentLossProbe, StageProgress
from .guards import LossGuard
from .loading import load_model
from .lora import attach_lora, saves_without_embedding
from .loss import LabelledLogitsLoss, causal_lm_loss, projects_directly
from .plan import StageStep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageInputs:
    tokenizer: Any
    train: list[Encoded]
    holdout: list[Encoded]
    tag_token_ids: list[int]  # tags added to the vocabulary as tokens (empty: none)


def train_stage(step: StageStep, inputs: StageInputs, layout: RunLayout) -> StageOutcome:
    """Train, save the adapter (or whole model) to the step's output atomically, and report."""
    from transformers import TrainerState, set_seed

    # Seeded before the model exists: new embedding rows and the adapter's initial weights
    # are drawn at creation, before the Trainer would seed anything.
    set_seed(step.config.training.seed)
    reset_peak_memory()
    started = time.perf_counter()
    tokenizer = inputs.tokenizer
    model = _stage_model(step, inputs, vocab_size=len(tokenizer))
    probe_collate = Collator(pad_id(tokenizer), step.labels, with_segments=True)
    probe = SegmentLossProbe(list(batches(inputs.holdout, step.config.training.batch_size, probe_collate)))
    loss = _loss_kind(step, model, probe.batches[0])
    trainer = stage_trainer(model, step.training_args, inputs.train, tokenizer, step.labels,
                            loss=loss, packed=step.config.training.packing,
                            callbacks=[FinishedCheckpoint(), probe, *_tensorboard(step),
                                       StageProgress(step.name), CheckpointManifest()],
                            guard=LossGuard(step.name, layout))
    resume = last_whole_checkpoint(layout)
    before = TrainerState.load_from_json(f"{resume}/trainer_state.json") if resume else TrainerState()
    if resume:
        log.info(f"{step.name}: resuming from {resume.name}")
    try:
        with disk_full_stops(step.name, layout.root):
            try:
                result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
                train_seconds, process_mean = result.metrics["train_runtime"], result.training_loss
            except AlreadyTrained:
                log.info(f"{step.name}: {resume.name} is its last step; nothing left to train")
                train_seconds, process_mean = 0.0, 0.0
            _save(trainer, tokenizer, step.output, step.full)
    finally:
        forget_optimizer_overrides()
    tokens = trainer.state.num_input_tokens_seen - before.num_input_tokens_seen
    history = trainer.state.log_history
    probes = [entry for entry in history if KEY_LOSS in entry]
    return StageOutcome(
        labels=step.labels, logits=LOGITS[loss], steps=trainer.state.global_step,
        resumed_from=resume.name if resume else None,
        seconds=round(time.perf_counter() - started, 1), train_seconds=round(train_seconds, 1),
        tokens=int(tokens), tokens_per_second=round(tokens / train_seconds, 1) if train_seconds else 0.0,
        **peak_memory(),
        train_loss=round(mean_train_loss(process_mean, history, before.global_step,
                                         trainer.state.global_step), 5),
        heldout_key_loss=Change(before=probes[0][KEY_LOSS], after=probes[-1][KEY_LOSS]),
        heldout_thinking_loss=Change(before=probes[0][THINKING_LOSS], after=probes[-1][THINKING_LOSS]),
        log_history=history,
    )


def mean_train_loss(process_mean: float, history: list[dict[str, Any]], resumed_at: int,
                    steps: int) -> float:
    """The training loss averaged over all of the stage's steps. The Trainer's own figure sums
    only the steps this process trained (after a resume, those since the checkpoint) and divides
    by all of them; the steps before come from the checkpoint's logs, which end at it."""
    before, logged = 0.0, 0
    for entry in history:
        if "loss" in entry and entry["step"] <= resumed_at:
            before += entry["loss"] * (entry["step"] - logged)
            logged = entry["step"]
    return process_mean + before / steps


def forget_optimizer_overrides() -> None:
    """With an 8-bit bitsandbytes optimizer the Trainer registers every embedding module of the
    model in bitsandbytes' process-wide manager (to keep their optimiser state in 32 bits), which
    then keeps the finished stage's embedding alive: after k-bit preparation an fp32 copy, 2 GiB
    at 7B with a 152k vocabulary, still allocated when the merge and stage 2 begin."""
    optimizer = sys.modules.get("bitsandbytes.optim.optimizer")
    if optimizer is not None:
        optimizer.GlobalOptimManager.get_instance().initialize()


LossKind = Literal["labelled", "full", "model"]
LOGITS: dict[LossKind, str] = {"labelled": "labelled positions", "full": "every position",
                               "model": "the backend's own loss"}


def _tensorboard(step: StageStep) -> list[Any]:
    """transformers' TensorBoard callback writing to the stage's own folder; listed after the
    probe, it logs the held-out losses with the training ones."""
    if step.tensorboard is None or not is_main():
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(step.tensorboard)))]


def _stage_model(step: StageStep, inputs: StageInputs, vocab_size: int) -> Any:
    """The model a stage trains: the base with a fresh adapter (from unsloth when the recipe's
    backend is unsloth), or in full mode the whole model."""
    training = step.config.training
    if step.base.backend == "unsloth":
        from .unsloth import unsloth_lora_model

        longest = max(len(row.input_ids) for row in inputs.train)
        return saves_without_embedding(unsloth_lora_model(
            step.base, step.config.lora, step.precision, vocab_size=vocab_size, max_length=longest,
            seed=training.seed, gradient_checkpointing=training.gradient_checkpointing))
    model = load_model(step.base, step.precision, vocab_size=vocab_size, weights=step.weights)
    if step.full:
        return model
    return saves_without_embedding(attach_lora(
        model, step.config.lora, new_token_ids=inputs.tag_token_ids if step.tag_rows else [],
        gradient_checkpointing=training.gradient_checkpointing))


def _loss_kind(step: StageStep, model: Any, batch: dict[str, Any]) -> LossKind:
    """Logits only where labels are, unless unsloth computes the loss with its own kernels,
    this architecture changes logits after its head, or the head's weights are sharded (whole
    only inside the model's forward)."""
    if step.base.backend == "unsloth":
        return "model"
    if not projects_directly(model, batch):
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
    tmp = empty_temporary(final) if is_main() else temporary(final)
    if full:
        trainer.save_model(str(tmp))  # every process takes part (sharded weights); the main one writes
    elif is_main():
        trainer.model.save_pretrained(tmp)  # the adapter alone (`saves_without_embedding`)
    if is_main():
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp)
        replace_dir(tmp, final)
    wait_for_everyone()

