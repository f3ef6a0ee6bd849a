"""The training loss, and the per-segment losses behind the loss curves.

The loss is the mean over every loss token of the whole accumulated batch: each
micro-batch contributes its token-loss *sum* divided by `num_items_in_batch`, the
Trainer's count of loss tokens over all micro-batches (and devices) of one optimiser step.
A mean per micro-batch would over-weight micro-batches with few loss tokens, which in a
key-only stage (a handful of tokens per example) is most of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from .masks import IGNORE


def causal_lm_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Shifted cross-entropy over labelled positions; never NaN, also with no loss token."""
    logits = outputs.logits[:, :-1]  # [b, t-1, vocab]: position i predicts token i+1
    targets = labels[:, 1:].to(logits.device)  # [b, t-1]
    keep = targets != IGNORE
    total = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")  # [n, vocab] -> []
    count = keep.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every next-token prediction, [b, t-1] (no reduction)."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device),
                   attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
    targets = batch["input_ids"][:, 1:].to(device)
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


@torch.no_grad()
def segment_losses(model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean loss on thinking tokens and on key tokens (Eq. 4), whatever the stage trains on."""
    sums = {"thinking": 0.0, "key": 0.0}
    counts = {"thinking": 0, "key": 0}
    for batch in batches:
        losses = token_losses(model, batch).cpu()
        for name in sums:
            mask = batch[f"is_{name}"][:, 1:].bool()
            sums[name] += float(losses[mask].sum())
            counts[name] += int(mask.sum())
    return {name: sums[name] / counts[name] if counts[name] else float("nan") for name in sums}
