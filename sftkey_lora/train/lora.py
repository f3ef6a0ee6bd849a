"""A LoRA adapter on a (possibly 4-bit) base, with trainable rows for tag tokens."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..errors import UserError, first_line
from ..recipe import LoraSection


def lora_config(cfg: LoraSection, token_rows: dict[str, list[int]] | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
        task_type="CAUSAL_LM", trainable_token_indices=token_rows or None,
    )


def attach_lora(model: Any, cfg: LoraSection, *, gradient_checkpointing: bool,
                new_token_ids: list[int] | None = None) -> Any:
    """A fresh adapter. A 4-bit base is first prepared for k-bit training (norms in fp32,
    input gradients for checkpointing). New tokens get trainable embedding rows: LoRA alone
    never learns a row that did not exist in pre-training."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        keep_4bit_differentiable(model)
    try:
        return get_peft_model(model, lora_config(cfg, token_rows(model, new_token_ids or [])))
    except ValueError as err:
        raise UserError(f"lora.target_modules: {first_line(err)}") from None


def saves_without_embedding(model: Any) -> Any:
    """The adapter with every save of it, the Trainer's checkpoints included, leaving out the
    resized embedding: the added tag rows are saved as the adapter's trainable tokens, and the
    whole embedding (a GB for a 7B model, in each checkpoint) would only repeat them."""
    model.save_pretrained = partial(type(model).save_pretrained, model, save_embedding_layers=False)
    return model


def token_rows(model: Any, ids: list[int]) -> dict[str, list[int]]:
    """Embedding modules whose `ids` rows must train: the input embedding, and the output
    head too unless it shares the input embedding's weight."""
    if not ids:
        return {}
    names = {module: name for name, module in model.named_modules()}
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {names[embed]: list(ids)}
    if head is not None and head.weight is not embed.weight:
        rows[names[head]] = list(ids)
    return rows


def keep_4bit_differentiable(model: Any) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference the first
    time a layer runs in eval mode without gradients (a loss probe, say) and keeps them
    packed; the packed kernel has no backward, so later training steps would silently drop
    the gradient through every frozen 4-bit layer. Training models never repack."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
