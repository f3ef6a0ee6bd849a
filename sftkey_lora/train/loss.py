"""The training loss, and the per-segment losses behind the loss curves.

The model is asked for its final hidden states and no logits (`Collator(hidden_only=True)`);
the loss projects to the vocabulary only the positions that carry a label, a chunk at a
time, taking each chunk's gradients while its logits exist. So no [batch, seq, vocab]
logits tensor ever exists: in a key-only stage a few positions per example are projected.

The loss is the mean over every loss token of the whole accumulated batch: each
micro-batch contributes its token-loss *sum* divided by `num_items_in_batch`, the
Trainer's count of loss tokens over all micro-batches (and devices) of one optimiser step.
A mean per micro-batch would over-weight micro-batches with few loss tokens, which in a
key-only stage (a handful of tokens per example) is most of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..prep.masks import IGNORE
from ..runtime.distributed import sharded

# Logits (positions x vocabulary) projected at once: a 64 MiB fp32 tile, three of which (the
# logits, their log-softmax, its gradient) are alive in a chunk's backward. With a 152k
# vocabulary that is 110 positions a chunk; with a small one, the whole batch.
CHUNK_LOGITS = 2**24


def tokens_per_chunk(vocab_size: int, budget: int = CHUNK_LOGITS) -> int:
    return max(1, budget // vocab_size)


def causal_lm_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Shifted cross-entropy over labelled positions; never NaN, also with no loss token."""
    logits = outputs.logits[:, :-1]  # [b, t-1, vocab]: position i predicts token i+1
    targets = labels[:, 1:].to(logits.device)  # [b, t-1]
    keep = targets != IGNORE
    total = F.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")  # [n, vocab] -> []
    count = keep.sum() if num_items_in_batch is None else num_items_in_batch
    return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


class LabelledLogitsLoss:
    """`compute_loss_func` for a model run with `output_hidden_states=True` and
    `logits_to_keep=<empty>`: the same value and gradients as `causal_lm_loss` on full logits."""

    def __init__(self, head: torch.nn.Module, chunk_tokens: int | None = None) -> None:
        self.head = head  # the model's output embedding (with any trainable tag rows)
        self.chunk_tokens = chunk_tokens or tokens_per_chunk(head.weight.shape[0])

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        hidden = outputs.hidden_states[-1]  # [b, t, h]: after the final norm
        targets = labels[:, 1:].to(hidden.device)  # [b, t-1]: position i predicts token i+1
        keep = targets != IGNORE
        states, wanted = hidden[:, :-1][keep], targets[keep]  # [n, h], [n]
        trainable = [p for p in self.head.parameters() if p.requires_grad]
        total = _LabelledCrossEntropy.apply(states, wanted, self.head, self.chunk_tokens, *trainable)
        total = total + hidden.sum().float() * 0  # stays in the graph when no position is labelled
        count = keep.sum() if num_items_in_batch is None else num_items_in_batch
        return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


class _LabelledCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `head(states)` against `wanted`, a chunk of positions at a time.
    Each chunk's gradients (to the states and the head's trainable parameters) are taken in the
    forward pass while its logits exist, so the backward pass only scales them: the head runs
    once per position, as with full logits, and only one chunk's logits are ever alive."""

    @staticmethod
    def forward(ctx: Any, states: torch.Tensor, wanted: torch.Tensor, head: torch.nn.Module,
                chunk_tokens: int, *params: torch.Tensor) -> torch.Tensor:
        grad_states = torch.zeros_like(states) if ctx.needs_input_grad[0] else None
        grad_params = [torch.zeros_like(p) if ctx.needs_input_grad[4 + i] else None
                       for i, p in enumerate(params)]
        wrt = [i for i, g in enumerate(grad_params) if g is not None]
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        for start in range(0, len(wanted), chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            with torch.enable_grad():
                part = states[chunk].detach().requires_grad_(grad_states is not None)
                logits = project(head, part).float()  # [n, vocab]
                loss = F.cross_entropy(logits, wanted[chunk], reduction="sum")
                inputs = ([part] if grad_states is not None else []) + [params[i] for i in wrt]
                grads = list(torch.autograd.grad(loss, inputs)) if inputs else []
            total += loss.detach()
            if grad_states is not None:
                grad_states[chunk] = grads.pop(0)
            for i, grad in zip(wrt, grads, strict=True):
                grad_params[i] += grad
        ctx.save_for_backward(*(g for g in [grad_states, *grad_params] if g is not None))
        ctx.present = [g is not None for g in [grad_states, *grad_params]]
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_total if present else None for present in ctx.present]
        return grads[0], None, None, None, *grads[1:]


def project(head: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
    """`head(states)` in the head's dtype. Under mixed precision the model's outputs, hidden
    states included, come back in fp32 (accelerate converts them) while a 16-bit head stays
    16-bit; the model's own forward would have run the head in 16 bits too."""
    weight = head.weight
    return head(states.to(weight.dtype) if weight.is_floating_point() else states)


@torch.no_grad()
def projects_like_the_model(model: Any, batch: dict[str, torch.Tensor], head: torch.nn.Module) -> bool:
    """Whether projecting the last hidden states through `head` gives the model's own logits
    (it does not where an architecture scales or caps logits after the head). Checked on a
    short piece of one row, so the full logits it needs stay small."""
    device = next(model.parameters()).device
    inputs = {key: batch[key][:1, :16].to(device) for key in ("input_ids", "attention_mask")}
    outputs = model(**inputs, output_hidden_states=True)
    projected = project(head, outputs.hidden_states[-1]).float()
    return torch.allclose(projected, outputs.logits.float(), rtol=1e-3, atol=1e-3)


def projects_directly(model: Any, batch: dict[str, torch.Tensor]) -> bool:
    """Whether logits may be computed from hidden states outside the model's forward pass: the
    head gives the model's own logits and its weights are whole (not sharded by FSDP or ZeRO)."""
    return not sharded() and projects_like_the_model(model, batch, model.get_output_embeddings())


@torch.no_grad()
def log_probs_at(model: Any, batch: dict[str, torch.Tensor], keep: torch.Tensor,
                 direct: bool) -> Iterator[torch.Tensor]:
    """Next-token log-probabilities at the positions `keep` [b, t-1] selects, in order, a chunk
    of positions ([c, vocab], fp32) at a time. `direct`: from the final hidden states through
    the head, so no [b, t, vocab] tensor exists; else from the model's full logits."""
    device = next(model.parameters()).device
    inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}
    keep = keep.to(device)
    if not direct:
        logits = model(**inputs).logits[:, :-1][keep]  # [n, vocab]
        yield F.log_softmax(logits.float(), dim=-1)
        return
    outputs = model(**inputs, output_hidden_states=True, logits_to_keep=torch.empty(0, dtype=torch.long))
    states = outputs.hidden_states[-1][:, :-1][keep]  # [n, h]
    head = model.get_output_embeddings()
    step = tokens_per_chunk(head.weight.shape[0])
    for start in range(0, len(states), step):
        yield F.log_softmax(project(head, states[start:start + step]).float(), dim=-1)  # [c, vocab]


SEGMENTS = ("thinking", "key")


class SegmentMeans:
    """Mean loss per segment (thinking, key) over labelled positions added a chunk at a time:
    the held-out probe and the merge's candidates are measured alike."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(SEGMENTS, 0.0)
        self.counts = dict.fromkeys(SEGMENTS, 0)

    def add(self, losses: torch.Tensor, flags: dict[str, torch.Tensor]) -> None:
        """`losses` [n] and, per segment, which of those positions are its own ([n] bool)."""
        for name in SEGMENTS:
            selected = flags[name].to(losses.device)
            self.sums[name] += float(losses[selected].double().sum())
            self.counts[name] += int(selected.sum())

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / self.counts[name] if self.counts[name] else float("nan")
                for name in SEGMENTS}


def target_losses(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[c] negative log-likelihood of each position's target from its [c, vocab] log-probabilities."""
    return -log_probs.gather(1, targets[:, None].to(log_probs.device))[:, 0]


@torch.no_grad()
def segment_losses(model: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean loss on thinking tokens and on key tokens (Eq. 4), whatever the stage trains on;
    only those positions are projected to the vocabulary."""
    direct = bool(batches) and projects_directly(model, batches[0])
    means = SegmentMeans()
    for batch in batches:
        masks = {name: batch[f"is_{name}"][:, 1:].bool() for name in SEGMENTS}  # [b, t-1]
        keep = masks["thinking"] | masks["key"]
        targets = batch["input_ids"][:, 1:][keep]  # [n]
        losses = torch.cat([target_losses(chunk, targets[done:done + len(chunk)])
                            for done, chunk in _with_offsets(log_probs_at(model, batch, keep, direct))])
        means.add(losses, {name: mask[keep] for name, mask in masks.items()})
    return means.means()


def _with_offsets(chunks: Iterable[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
    done = 0
    for chunk in chunks:
        yield done, chunk
        done += len(chunk)
