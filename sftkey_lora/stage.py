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
from typing import Any

from .callbacks import KEY_KEY, THINKING_KEY, SegmentLossProbe, StageProgress
from .collate import Collator, batches, pad_id
from .distributed import is_main, sharded, wait_for_everyone
from .hardware import peak_memory, reset_peak_memory
from .loading import load_model
from .lora import attach_lora
from .loss import LabelledLogitsLoss, causal_lm_loss, projects_like_the_model
from .masks import Encoded
from .plan import StagePlan
from .rundir import replace_dir
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
    from transformers.trainer_utils import get_last_checkpoint

    # Seeded before the model exists: new embedding rows and the adapter's initial weights
    # are drawn at creation, before the Trainer would seed anything.
    set_seed(plan.config.training.seed)
    reset_peak_memory()
    started = time.perf_counter()
    tokenizer = inputs.tokenizer
    model = load_model(plan.model, plan.precision, vocab_size=len(tokenizer))
    full = plan.config.training.mode == "full"
    if not full:
        model = attach_lora(model, plan.config.lora, new_token_ids=inputs.new_token_ids,
                            gradient_checkpointing=plan.config.training.gradient_checkpointing)
    probe_collate = Collator(pad_id(tokenizer), plan.labels, with_segments=True)
    probe = SegmentLossProbe(list(batches(inputs.holdout, plan.config.training.batch_size, probe_collate)))
    # Logits only where labels are, unless this architecture changes logits after its head, or
    # the head's weights are sharded (whole only inside the model's forward).
    head = model.get_output_embeddings()
    hidden_only = not sharded() and projects_like_the_model(model, probe.batches[0], head)
    trainer = stage_trainer(model, plan.training_args, inputs.train, tokenizer, plan.labels,
                            hidden_only=hidden_only, packed=plan.config.training.packing,
                            callbacks=[probe, StageProgress(plan.name)])
    resume = get_last_checkpoint(str(run_dir))
    before = TrainerState.load_from_json(f"{resume}/trainer_state.json") if resume else TrainerState()
    result = trainer.train(resume_from_checkpoint=resume)

    _save(trainer, tokenizer, run_dir / plan.name, full)
    seconds = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen - before.num_input_tokens_seen
    history = trainer.state.log_history
    probes = [entry for entry in history if KEY_KEY in entry]
    return {
        "labels": plan.labels, "steps": trainer.state.global_step,
        "logits": "labelled positions" if hidden_only else "every position",
        "resumed_from": Path(resume).name if resume else None,
        "seconds": round(seconds, 1), "train_seconds": round(result.metrics["train_runtime"], 1),
        "tokens": int(tokens), "tokens_per_second": round(tokens / result.metrics["train_runtime"], 1),
        **peak_memory(), "train_loss": round(result.training_loss, 5),
        "heldout_key_loss": {"before": probes[0][KEY_KEY], "after": probes[-1][KEY_KEY]},
        "heldout_thinking_loss": {"before": probes[0][THINKING_KEY], "after": probes[-1][THINKING_KEY]},
        "log_history": history,
    }


def stage_trainer(model: Any, training_args: dict[str, Any], train: list[Encoded], tokenizer: Any,
                  labels: LabelKind, *, hidden_only: bool, packed: bool = False,
                  callbacks: Sequence[Any] = ()) -> Any:
    """The transformers Trainer of a stage, configured rather than subclassed: our collator
    (the stage's labels) and our loss (labelled positions only, when `hidden_only`)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    loss = LabelledLogitsLoss(model.get_output_embeddings()) if hidden_only else causal_lm_loss
    trainer = Trainer(
        model=model, args=TrainingArguments(**training_args), train_dataset=train,
        data_collator=Collator(pad_id(tokenizer), labels, hidden_only=hidden_only, packed=packed),
        processing_class=tokenizer, callbacks=list(callbacks),
        compute_loss_func=loss,
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

