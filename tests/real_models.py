"""Tiny random-weight models of the paper's architectures, with their real tokenizers.

Each is built from transformers' own config class with the real vocabulary, head tying and
layer layout of the model it stands for, shrunk to two layers of width 64: the code paths
(attention, RoPE layout, tied or untied head, 151k or 128k vocabulary) are the real ones,
only the sizes and weights are not.

    python -m tests.real_models DIR    # write every model under DIR (one folder each)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tests.real_tokenizers import tokenizer_dir

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048}


@dataclass(frozen=True)
class Architecture:
    config_class: str  # in transformers
    tokenizer: str  # in tests/real_tokenizers.py
    tied: bool  # the head shares the input embedding
    stands_for: str
    extra: tuple[tuple[str, object], ...] = ()


ARCHITECTURES = {
    "qwen2-tied": Architecture("Qwen2Config", "qwen2.5", True, "Qwen2.5-1.5B / 3B"),
    "qwen2-untied": Architecture("Qwen2Config", "qwen2.5", False, "Qwen2.5-7B"),
    "qwen3": Architecture("Qwen3Config", "qwen3", False, "Qwen3-8B-Base"),
    "smollm3": Architecture("SmolLM3Config", "smollm3", True, "SmolLM3-3B-Base",
                            (("no_rope_layers", [1, 0]),)),
    "llama3": Architecture("LlamaConfig", "llama-3", False, "Llama-3-8B"),
}


def build(name: str, folder: Path, seed: int = 0) -> Path:
    """Write model `name` (config, random weights in fp32, its real tokenizer) to `folder`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = ARCHITECTURES[name]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir(arch.tokenizer)))
    vocab = 151936 if arch.tokenizer.startswith("qwen") else 128256  # the published embedding rows
    ids = {key: getattr(tokenizer, f"{key}_token_id") for key in ("bos", "eos", "pad")}
    config = getattr(transformers, arch.config_class)(
        **SHAPE, vocab_size=vocab, tie_word_embeddings=arch.tied, **dict(arch.extra),
        **{f"{key}_token_id": value for key, value in ids.items()})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for arch_name in ARCHITECTURES:
        print(build(arch_name, root / arch_name))
