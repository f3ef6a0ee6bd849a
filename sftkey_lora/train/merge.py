"""Merge the stage-1 adapter into 16-bit weights, choosing the base by measured KL.

Merging into 4-bit weights would re-quantize them, and the error adds up. Instead the
adapter is merged into 16-bit weights, of which there are two candidates:
  - `original`: the checkpoint's own weights;
  - `nf4`: the NF4 round trip of them, the weights the adapter actually saw in training.
Each merge is saved, re-loaded as stage 2 will load it (in 4-bit, unless `merge.requantize`
is false), and compared with the
stage-1 model (4-bit base + adapter) by the mean per-token KL on held-out responses; its
held-out thinking and key losses, measured in the same pass, are where stage 2 starts.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..prep.masks import IGNORE
from ..recipe import ModelConfig
from ..rundir.files import empty_temporary, replace_dir
from ..rundir.manifest import write_manifest
from ..rundir.outcomes import MergeOutcome
from ..runtime.hardware import ResolvedPrecision, peak_memory, reset_peak_memory
from .loading import load_model, pretrained_model
from .loss import SEGMENTS, SegmentMeans, log_probs_at, projects_directly, target_losses
from .plan import MergeStep

CANDIDATES = ("original", "nf4")


def merge_stage1(step: MergeStep, tokenizer: Any, holdout: list[dict[str, torch.Tensor]]) -> MergeOutcome:
    """Write the step's output (HF model + tokenizer); report the KL of every candidate."""
    from peft import PeftModel

    started = time.perf_counter()
    reset_peak_memory()
    model_cfg, precision, vocab = step.model, step.precision, len(tokenizer)
    reference = load_model(model_cfg, precision, vocab_size=vocab)
    reference = PeftModel.from_pretrained(reference, str(step.adapter)).eval()
    # Without quantization the adapter saw the original weights: there is nothing to compare.
    candidates = CANDIDATES if model_cfg.quantization == "nf4" else ("original",)
    kl: dict[str, float] = {}
    starts: dict[str, dict[str, float]] = {}
    written: dict[str, Path] = {}
    for name in candidates:
        tmp = empty_temporary(step.output, name)
        merged_16bit(model_cfg, step.adapter, name, vocab, precision).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        written[name] = tmp
        requantized = load_model(step.next_base.model_copy(update={"name_or_path": str(tmp)}),
                                 precision, vocab_size=vocab).eval()
        kl[name], starts[name] = kl_and_losses(reference, requantized, holdout)
        del requantized
    chosen = min(kl, key=kl.__getitem__) if step.choice == "auto" else step.choice
    write_manifest(written[chosen])
    replace_dir(written.pop(chosen), step.output)
    for tmp in written.values():
        shutil.rmtree(tmp)
    return MergeOutcome(seconds=round(time.perf_counter() - started, 1),
                        kl={name: float(f"{value:.4g}") for name, value in kl.items()}, base=chosen,
                        heldout={name: {segment: round(value, 5) for segment, value in losses.items()}
                                 for name, losses in starts.items()},
                        chosen_by="lowest KL" if step.choice == "auto" else "recipe merge.base",
                        **peak_memory())


def merged_16bit(model_cfg: ModelConfig, adapter_dir: Path, base: str, vocab_size: int,
                 precision: ResolvedPrecision) -> Any:
    """The stage-1 adapter merged into 16-bit weights (the checkpoint's own dtype), on the CPU."""
    from peft import PeftModel

    model = pretrained_model(model_cfg, vocab_size, dtype="auto")
    if base == "nf4":
        _round_trip_nf4(model, model_cfg, precision)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


@torch.no_grad()
def _round_trip_nf4(model: Any, model_cfg: ModelConfig, precision: ResolvedPrecision) -> None:
    """Replace every weight that 4-bit loading quantizes by its NF4 round trip, quantized
    from the same dtype as in training so the values are exactly those the adapter saw."""
    import bitsandbytes as bnb

    quantized = load_model(model_cfg, precision, vocab_size=0)  # model.quantization is nf4 here
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            target = model.get_submodule(name).weight
            target.copy_(weight.to(device=target.device, dtype=target.dtype))
    del quantized


@torch.no_grad()
def kl_and_losses(reference: Any, other: Any,
                  batches: list[dict[str, torch.Tensor]]) -> tuple[float, dict[str, float]]:
    """Mean over response tokens of KL(reference ‖ other) of the next-token distributions, and
    `other`'s mean loss on the thinking and on the key tokens, from the same log-probabilities:
    projected a chunk of response positions at a time (never whole-batch logits of two models)."""
    direct = bool(batches) and all(projects_directly(model, batches[0]) for model in (reference, other))
    total, count = 0.0, 0
    means = SegmentMeans()
    for batch in batches:
        keep = batch["labels"][:, 1:] != IGNORE  # [b, t-1]
        targets = batch["input_ids"][:, 1:][keep]  # [n]
        flags = {name: batch[f"is_{name}"][:, 1:][keep].bool() for name in SEGMENTS}  # [n] each
        pairs = zip(log_probs_at(reference, batch, keep, direct), log_probs_at(other, batch, keep, direct),
                    strict=True)
        done = 0
        for p, q in pairs:  # [c, vocab] each
            q = q.to(p.device)
            total += float(F.kl_div(q.double(), p.double(), log_target=True, reduction="sum"))
            chunk = slice(done, done + len(q))
            means.add(target_losses(q, targets[chunk]), {name: flag[chunk] for name, flag in flags.items()})
            done += len(q)
        count += int(keep.sum())
    # KL is never negative; summing in float64 can still leave a hair below zero where two
    # models agree to the last bit (the 16-bit merge, 'nf4 -5.09e-10').
    return max(total / max(count, 1), 0.0), means.means()
