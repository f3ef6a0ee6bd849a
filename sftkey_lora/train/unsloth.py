"""`model.backend: unsloth`: the base loaded by unsloth's `FastLanguageModel` (its 4-bit
loading and fused kernels), with its LoRA and its gradient checkpointing; the stages, labels,
Trainer and saved adapters stay ours. Imported only when a recipe chooses this backend."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..recipe import LoraSection, ModelConfig
from ..runtime.hardware import ResolvedPrecision, cuda_available, torch_dtype
from .loading import resolve_model_path

# What peft's `all-linear` selects in Llama/Qwen/Mistral-style decoders, spelled out for
# unsloth, which takes module names.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def require_unsloth() -> Any:
    """The unsloth module, imported before the rest of training imports transformers (so its
    patches apply); a user error where it cannot run."""
    if not cuda_available():
        raise UserError("model.backend: unsloth needs a CUDA GPU and this machine has none; "
                        "use model.backend: transformers (the default), which runs anywhere")
    try:
        import unsloth
    except ImportError as err:
        raise UserError(f"model.backend: unsloth is not installed ({err}); "
                        "pip install 'sftkey-lora[unsloth]'") from None
    return unsloth


def unsloth_lora_model(cfg: ModelConfig, lora: LoraSection, precision: ResolvedPrecision, *,
                       vocab_size: int, max_length: int, seed: int, gradient_checkpointing: bool) -> Any:
    """The base through `FastLanguageModel.from_pretrained` and a fresh adapter through its
    `get_peft_model`, with the recipe's rank, alpha, dropout and modules."""
    fast = require_unsloth().FastLanguageModel
    try:
        model, _ = fast.from_pretrained(
            model_name=resolve_model_path(cfg.name_or_path), revision=cfg.revision,
            max_seq_length=max_length, dtype=torch_dtype(precision),
            load_in_4bit=cfg.quantization == "nf4", trust_remote_code=cfg.trust_remote_code,
            fix_tokenizer=False,  # the tokenizer is ours, loaded once for every stage
        )
    except (OSError, ValueError) as err:
        raise UserError(f"model.name_or_path: unsloth cannot load {cfg.name_or_path!r} ({err})") from None
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    modules = ALL_LINEAR if lora.target_modules == "all-linear" else lora.target_modules
    return fast.get_peft_model(
        model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=modules,
        bias="none", use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
    )
