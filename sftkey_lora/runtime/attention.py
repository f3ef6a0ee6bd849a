"""Attention on a CPU for models whose key/value heads are fewer than their query heads
(grouped-query attention: Llama 3, Qwen2.5, Qwen3, SmolLM2, SmolLM3).

transformers' `sdpa` keeps PyTorch's grouped kernel (`enable_gqa`) only where no padding mask
is given, since a CUDA kernel with a mask falls back to plain arithmetic; with a mask it copies
every key and value head once per query head. A batch of prompts for generation is padded, so
on a CPU that copy of the whole cache at every generated token was a large part of each step:
SmolLM2-135M, 64 prompts of 143 tokens, 96 new tokens each, 90 s against 60 s without it, the
same tokens. PyTorch's CPU attention takes the grouped heads with a mask as they are, so on a
CPU the kit passes them so. Training computes the same gradients in the same time either way.
"""

from __future__ import annotations

from typing import Any

NAME = "sftkey_grouped_sdpa"


def use_grouped_attention_on_cpu(model: Any) -> None:
    """Switch a model just loaded on a CPU from the library's `sdpa` to ours, where its
    attention is grouped; any other model or device keeps what the library chose. The name
    is never saved: a saved config names no attention, so a reader's default applies."""
    config = model.config.get_text_config()
    heads, groups = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa" or groups in (None, heads):
        return
    _register()
    model.set_attn_implementation(NAME)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, _grouped_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _grouped_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                  dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None,
                  **kwargs: Any) -> tuple[Any, None]:
    """transformers' `sdpa` call with the key/value heads left grouped; anything it does
    beyond that (a position bias, heads that are not grouped) goes to the library's own."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.shape[1] == query.shape[1] or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=query.shape[2] > 1 and attention_mask is None and causal, enable_gqa=True)
    return output.transpose(1, 2).contiguous(), None
