"""What every contender trains on: one random-initialised Llama-architecture model with the
Qwen2.5 vocabulary size (or a real model's directory, its dimensions and weights), and
synthetic rows of a fixed length whose last tokens are the key."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..data.example import Example
from ..prep.masks import Encoded
from ..prep.render import Segment

QWEN25_VOCAB = 151_936


@dataclass(frozen=True)
class Workload:
    vocab_size: int = QWEN25_VOCAB
    # A small body under a large vocabulary, as in the small Qwen2.5 models, where the
    # output head is most of the compute and memory of a training step.
    hidden_size: int = 512
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2
    intermediate_size: int = 1408
    seq_len: int = 512
    batch_size: int = 4
    prompt_tokens: int = 32  # never a label
    key_tokens: int = 16  # the answer span after </Thinking>: stage 2's labels
    quantization: str = "nf4"  # the base as QLoRA loads it; `none`: 16/32-bit
    dtype: str = "fp32"  # of the written weights: bf16 halves a 7B model's file (15 GB, not 30)
    steps: int = 3  # timed optimiser steps
    warmup_steps: int = 1  # untimed steps first (allocator, caches)
    seed: int = 0
    # A model directory with real weights, trained instead of a random one; its config gives
    # the dimensions above (`of_model`).
    model: str = ""

    def __post_init__(self) -> None:
        least = {name: 0 if name in ("seed", "warmup_steps") else 1
                 for name, value in asdict(self).items() if isinstance(value, int)}
        small = [name for name, low in least.items() if getattr(self, name) < low]
        if small:
            raise ValueError(f"{', '.join(small)}: too small")
        if self.seq_len <= self.prompt_tokens + self.key_tokens:
            raise ValueError("seq_len must exceed prompt_tokens + key_tokens")
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError("heads must divide hidden_size, and kv_heads must divide heads")
        if self.quantization not in ("nf4", "none"):
            raise ValueError(f"quantization: nf4 or none, not {self.quantization!r}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype: fp32 or bf16, not {self.dtype!r}")

    def of_model(self) -> Workload:
        """This workload with the dimensions of `model`'s config (unchanged without one)."""
        if not self.model:
            return self
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(self.model)
        except OSError:
            raise ValueError(f"model: {self.model} is not a model directory") from None
        return replace(self, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                       layers=config.num_hidden_layers, heads=config.num_attention_heads,
                       kv_heads=config.num_key_value_heads, intermediate_size=config.intermediate_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls(**json.loads(text))

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.batch_size


def write_model(workload: Workload, folder: Path) -> Path:
    """Save the random-initialised model (and a tokenizer, which the trainers want for
    padding) once, so every contender loads the very same weights through `from_pretrained`;
    a workload of a real model uses its directory as it is. Returns the model's directory."""
    if workload.model:
        return Path(workload.model)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    from ..train.loading import resolve_model_path

    config = LlamaConfig(
        vocab_size=workload.vocab_size, hidden_size=workload.hidden_size,
        num_hidden_layers=workload.layers, num_attention_heads=workload.heads,
        num_key_value_heads=workload.kv_heads, intermediate_size=workload.intermediate_size,
        max_position_embeddings=max(2048, workload.seq_len), tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    torch.manual_seed(workload.seed)
    logging.disable_progress_bar()
    dtype = torch.bfloat16 if workload.dtype == "bf16" else torch.float32
    # Initialised on the GPU where there is one: a 7B model's random init is minutes on a CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    del model
    AutoTokenizer.from_pretrained(resolve_model_path("builtin:tiny")).save_pretrained(folder)
    return folder


def rows(workload: Workload, count: int) -> list[Encoded]:
    """Rows of exactly `seq_len` random ids: prompt, thinking, then `key_tokens` of key."""
    rng = random.Random(workload.seed)
    think = workload.seq_len - workload.prompt_tokens - workload.key_tokens
    segments = np.array([Segment.PROMPT] * workload.prompt_tokens + [Segment.THINKING] * think
                        + [Segment.ANSWER] * workload.key_tokens, np.int8)
    example = Example(prompt="", thinking="", answer="")
    return [Encoded(example, np.array([rng.randrange(2, workload.vocab_size) for _ in segments], np.int32),
                    segments, segments != Segment.PROMPT, segments == Segment.ANSWER) for _ in range(count)]
