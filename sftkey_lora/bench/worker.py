"""One contender's training steps on one stage, timed in a process of its own, so that the
peak memory it reports is its own: `python -m sftkey_lora.bench.worker WORKLOAD MODEL_DIR
CONTENDER STAGE` prints one JSON line.

Contenders, all on the same model, adapter, rows, labels and TrainingArguments:
- `sftkey`: our stage's Trainer (`train.stage.stage_trainer`): logits at labelled positions only;
- `trl`: TRL's `SFTTrainer`, its `completion_mask` set to our labels;
- `plain`: the transformers `Trainer` with the model's own loss over full logits;
- `unsloth` (on a GPU where it is installed): our Trainer on unsloth's model, adapter and loss;
- `floor`: our Trainer with no head at all: the backbone's forward and backward alone (a loss
  of the last hidden states' mean square carries the gradient back), the limit of a stage that
  projects ever fewer positions.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..recipe import LoraSection, ModelConfig, TrainingConfig
from ..runtime.hardware import (
    ResolvedPrecision,
    cuda_available,
    peak_memory,
    reset_peak_memory,
    resolve_precision,
)
from ..strategies import LabelKind
from ..train.loading import load_model
from ..train.lora import attach_lora
from ..train.plan import training_arguments
from ..train.stage import stage_trainer
from .contest import STAGE_LABELS
from .workload import Workload, rows

# Dense bf16 peak of the GPUs MFU is reported for (FLOP/s).
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "L4": 121e12}


def measure(workload: Workload, model_dir: Path, contender: str, stage: str) -> dict[str, Any]:
    from transformers import AutoTokenizer, set_seed

    set_seed(workload.seed)
    labels = STAGE_LABELS[stage]
    precision = resolve_precision("auto")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _model(contender, workload, model_dir, precision)
    train = rows(workload, workload.batch_size * (workload.warmup_steps + workload.steps))
    config = TrainingConfig(batch_size=workload.batch_size, max_steps=workload.warmup_steps + workload.steps,
                            shuffle=False, logging_steps=1, warmup=0, seed=workload.seed)
    backend = "unsloth" if contender == "unsloth" else "transformers"
    with tempfile.TemporaryDirectory() as out:
        args = {**training_arguments(config, precision, Path(out), cuda=cuda_available(), backend=backend),
                "save_strategy": "no"}
        trainer = _trainer(contender, model, args, train, tokenizer, labels)
        timer = StepTimer(workload.warmup_steps)
        trainer.add_callback(timer)
        reset_peak_memory()  # the peak of training, weights included, not of loading
        trainer.train()
        memory = peak_memory()
    step = sum(timer.seconds) / len(timer.seconds)
    result = {
        "contender": contender, "stage": stage, "step_time_s": round(step, 4),
        "tokens_per_s": round(workload.tokens_per_step / step, 1),
        "peak_mem_mb": memory["peak_memory_mb"], "memory_kind": memory["memory_kind"],
        "losses": [round(e["loss"], 5) for e in trainer.state.log_history if "loss" in e],
    }
    if cuda_available():
        result["mfu"] = mfu(model.config, workload, step)
    return result


def _model(contender: str, workload: Workload, model_dir: Path, precision: ResolvedPrecision) -> Any:
    """The base with the recipe-default LoRA adapter; for `unsloth`, both through unsloth."""
    cfg = ModelConfig(name_or_path=str(model_dir), quantization=workload.quantization)
    if contender == "unsloth":
        from ..train.unsloth import unsloth_lora_model

        return unsloth_lora_model(cfg, LoraSection(), precision, vocab_size=workload.vocab_size,
                                  max_length=workload.seq_len, seed=workload.seed,
                                  gradient_checkpointing=True)
    return attach_lora(load_model(cfg, precision, vocab_size=workload.vocab_size), LoraSection(),
                       gradient_checkpointing=True)


def _trainer(contender: str, model: Any, args: dict[str, Any], train: list, tokenizer: Any,
             labels: LabelKind) -> Any:
    if contender == "sftkey":
        return stage_trainer(model, args, train, tokenizer, labels, loss="labelled")
    if contender == "floor":
        trainer = stage_trainer(model, args, train, tokenizer, labels, loss="labelled")  # hidden states only
        trainer.compute_loss_func = backbone_only
        return trainer
    if contender in ("plain", "unsloth"):
        # The model computes its own loss: plain transformers over [batch, seq, vocab] logits,
        # unsloth with its fused kernels.
        return stage_trainer(model, args, train, tokenizer, labels, loss="model")
    if contender == "trl":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        data = Dataset.from_list([{"input_ids": row.input_ids.tolist(),
                                   "completion_mask": row.mask(labels).astype(int).tolist()}
                                  for row in train])
        config = SFTConfig(**args, completion_only_loss=True, max_length=None, packing=False)
        return SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    raise ValueError(f"unknown contender {contender!r}")


def backbone_only(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """The floor's loss: no head, a mean square of the last hidden states."""
    return outputs.hidden_states[-1].float().square().mean()


class StepTimer(TrainerCallback):
    """Wall time of each optimiser step after the first `warmup`."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seconds: list[float] = []
        self._started = 0.0
        self._step = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize()
        self._started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize()
        self._step += 1
        if self._step > self.warmup:
            self.seconds.append(time.perf_counter() - self._started)


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def mfu(config: Any, workload: Workload, step_seconds: float) -> float | None:
    """Model FLOPs utilisation: 6 FLOPs per parameter per token for every linear layer and the
    head (all positions, whatever a contender skips), plus causal attention, over the GPU's peak."""
    import torch

    device = torch.cuda.get_device_name()
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device), None)
    if peak is None:
        return None
    h, layers, seq = config.hidden_size, config.num_hidden_layers, workload.seq_len
    kv = h * config.num_key_value_heads // config.num_attention_heads
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    per_token = 6 * (layers * per_layer + config.vocab_size * h) + 6 * layers * seq * h
    return round(per_token * workload.tokens_per_step / step_seconds / peak, 4)


if __name__ == "__main__":
    workload_json, model_dir, contender_name, stage_name = sys.argv[1:5]
    print(json.dumps(measure(Workload.from_json(workload_json), Path(model_dir), contender_name, stage_name)))
