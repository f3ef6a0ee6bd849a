"""Tiny random-weight models of the paper's architectures, with their real tokenizers.

Each is built from transformers' own config class with the real vocabulary, head tying and
layer layout of the model it stands for, shrunk to two layers of width 64: the code paths
(attention, RoPE layout, tied or untied head, 151k or 128k vocabulary) are the real ones,
only the sizes and weights are not.

    python -m tests.real_models DIR            # write every model under DIR (one folder each)
    python -m tests.real_models DIR --table    # and run the matrix: the README's supported-models table

The matrix: every architecture trains both stages of `sftkey_tag` over an NF4 base, merges and
is evaluated ("4-bit"), with the tags given in its row, and runs the variants in its row;
tests/test_architectures.py runs it and checks what README.md's table says.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.real_tokenizers import tokenizer_dir
from tests.support import ROOT

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048}


@dataclass(frozen=True)
class Architecture:
    config_class: str  # in transformers
    tokenizer: str  # in tests/real_tokenizers.py
    tied: bool  # the head shares the input embedding
    stands_for: str
    tags: str  # a key of TAGS: how its runs write the tags
    variants: tuple[str, ...]  # keys of VARIANTS run beside the 4-bit run
    extra: tuple[tuple[str, object], ...] = ()
    logits: str = "labelled positions"  # the loss's logits path its runs must record


ARCHITECTURES = {
    "qwen2-tied": Architecture("Qwen2Config", "qwen2.5", True, "Qwen2.5-1.5B / 3B", "added", ("full",)),
    "qwen2-untied": Architecture("Qwen2Config", "qwen2.5", False, "Qwen2.5-7B", "text",
                                 ("16-bit, packed",)),
    "qwen3": Architecture("Qwen3Config", "qwen3", False, "Qwen3-8B-Base", "think", ("4-bit, packed",)),
    "smollm3": Architecture("SmolLM3Config", "smollm3", True, "SmolLM3-3B-Base", "added",
                            ("16-bit, packed",), (("no_rope_layers", [1, 0]),)),
    "llama3": Architecture("LlamaConfig", "llama-3", False, "Llama-3-8B", "text", ("full",)),
}

# How a run writes the tags: the recipe it starts from and what it sets.
TAGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "added": ("quickstart.yaml", ("format.tags=added_tokens",), "paper's, added tokens"),
    "text": ("quickstart.yaml", ("format.tags=text",), "paper's, as text"),
    "think": ("qwen3-think.yaml", (), "`<think>` (recipes/qwen3-think.yaml)"),
}
VARIANTS: dict[str, tuple[str, ...]] = {
    "4-bit": (),  # the recipe's own: both stages over an NF4 base, the merge between them
    "4-bit, packed": ("training.packing=true",),
    "16-bit, packed": ("model.quantization=none", "training.packing=true"),
    "full": ("model.quantization=none", "training.mode=full"),
}
# A few steps of each stage on a few short examples: every code path, little time.
SMALL = ("data.source=synthetic", "data.synthetic.n_train=10", "data.holdout=4", "format.system_prompt=",
         "format.max_length=512", "training.batch_size=4", "training.gradient_accumulation_steps=1",
         "training.optimizer=adamw_torch", "training.gradient_checkpointing=false",
         "training.logging_steps=1", "training.save_steps=100", "stages.stage1.training.max_steps=2",
         "stages.stage2.training.max_steps=2")
EVAL = ("eval.tasks=[sftkey_synthetic]", "eval.limit=2", "eval.max_gen_toks=8")


def matrix() -> list[tuple[str, str]]:
    """(architecture, variant) of every run."""
    return [(name, variant) for name, arch in ARCHITECTURES.items() for variant in ("4-bit", *arch.variants)]


def run(name: str, variant: str, model_dir: Path, output: Path) -> tuple[Any, Any]:
    """Train (and for the 4-bit run, evaluate) `variant` of architecture `name`: (recipe, record)."""
    from sftkey_lora.pipeline import run_recipe
    from sftkey_lora.recipe import load_recipe

    recipe, tag_overrides, _ = TAGS[ARCHITECTURES[name].tags]
    overrides = [f"model.name_or_path={model_dir}", *tag_overrides, *SMALL, *VARIANTS[variant],
                 *(EVAL if variant == "4-bit" else ("eval.tasks=[]",))]
    loaded = load_recipe(ROOT / "recipes" / recipe, overrides)
    return loaded, run_recipe(loaded, output)


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


HEADER = ("Architecture", "Stands for", "Tokenizer, vocabulary", "Head", "Tags", "Runs", "Loss logits")
FIGURES = ("stage 1 / merge / stage 2", "peak memory", "merge KL")


def described(name: str) -> tuple[str, ...]:
    """The README table's cells for architecture `name` that the matrix decides."""
    arch = ARCHITECTURES[name]
    vocab = "151,936" if arch.tokenizer.startswith("qwen") else "128,256"
    runs = "; ".join(("4-bit + eval", *arch.variants))
    return (f"`{arch.config_class}`", arch.stands_for, f"{arch.tokenizer}, {vocab}",
            "tied" if arch.tied else "untied", TAGS[arch.tags][2], runs, arch.logits)


def measured(record: Any) -> tuple[str, ...]:
    """The figure cells, from a 4-bit run's record."""
    steps = record.data["steps"]
    seconds = " / ".join(f"{steps[step]['seconds']:.0f} s" for step in ("stage1", "merge", "stage2"))
    peak = max(steps[step]["peak_memory_mb"] for step in ("stage1", "merge", "stage2"))
    merge = steps["merge"]
    return seconds, f"{peak:,.0f} MB", f"{merge['kl'][merge['base']]:.2g} ({merge['base']})"


def table(figures: dict[str, tuple[str, ...]]) -> str:
    """The supported-models table in Markdown."""
    lines = ["| " + " | ".join(HEADER + FIGURES) + " |", "|" + "---|" * (len(HEADER) + len(FIGURES))]
    lines += ["| " + " | ".join(described(name) + figures[name]) + " |" for name in ARCHITECTURES]
    return "\n".join(lines)


def measure(name: str, root: Path) -> tuple[str, ...]:
    """The figure cells of `name`'s 4-bit run."""
    return measured(run(name, "4-bit", root / name, root / "runs" / name)[1])


def main(root: Path, with_table: bool) -> None:
    for name in ARCHITECTURES:
        print(build(name, root / name))
    if with_table:  # each run in a fresh process, so no run's peak memory includes another's
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
            figures = dict(zip(ARCHITECTURES, pool.map(measure, ARCHITECTURES, [root] * len(ARCHITECTURES)),
                               strict=True))
        print(table(figures))


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--table" in sys.argv[2:])
