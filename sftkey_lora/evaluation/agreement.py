"""How a GGUF's greedy tokens agree with transformers' on the export they came from, on the
evaluation's own prompts: the figures the README states and the tests assert.

    python -m sftkey_lora.evaluation.agreement EXPORT_DIR [--n 32] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..gguf.lm import LlamaCppLM
from ..rundir.layout import EXPORTED_RECIPE


@dataclass(frozen=True)
class Agreement:
    prompts: int
    whole: int  # prompts whose first `tokens` tokens are the same
    mean_prefix: float  # tokens in common from the start, at most `tokens`
    tokens: int


def export_prompts(export: Path, n: int) -> list[str]:
    """The first `n` evaluation prompts of the export's task, rendered as in training."""
    from ..recipe import validate_recipe
    from .tasks import build_docs

    recipe = validate_recipe(json.loads((export / EXPORTED_RECIPE).read_text(encoding="utf-8")),
                             source=str(export / EXPORTED_RECIPE))
    model = recipe.model.model_copy(update={"name_or_path": str(export)})  # its tokenizer renders
    recipe = recipe.model_copy(update={"model": model})
    task = recipe.eval_tasks()[0] if recipe.eval_tasks() else "sftkey_synthetic"
    docs = build_docs(task, {"recipe": recipe.model_dump(mode="json")})["test"]
    return [doc["prompt"] for doc in docs.select(range(min(n, len(docs))))]


def transformers_greedy(export: Path, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """Greedy tokens of the export in transformers, one prompt at a time (no padding), the
    end-of-sequence token left out."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export).eval()
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos])
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new)[0, len(prompt):].tolist()
            outputs.append(new[:next((i for i, token in enumerate(new) if token in stops), len(new))])
    return outputs


def gguf_greedy(lm: LlamaCppLM, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    return [lm.greedy(prompt, max_new) for prompt in prompts]


def agreement(a: list[list[int]], b: list[list[int]], tokens: int) -> Agreement:
    """Of each pair of outputs, the first `tokens`: whether they are the same (an output that
    ended earlier must end at the same place), and how many tokens agree from the start."""
    pairs = [(one[:tokens], other[:tokens]) for one, other in zip(a, b, strict=True)]
    prefixes = [next((i for i, (x, y) in enumerate(zip(one, other, strict=False)) if x != y),
                     min(len(one), len(other))) for one, other in pairs]
    return Agreement(prompts=len(pairs), whole=sum(one == other for one, other in pairs),
                     mean_prefix=sum(prefixes) / max(len(prefixes), 1), tokens=tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--n", type=int, default=32, help="evaluation prompts")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens compared")
    args = parser.parse_args(argv)
    texts = export_prompts(args.export, args.n)
    reference: list[list[int]] | None = None
    print(f"{len(texts)} prompts, the first {args.tokens} new tokens against transformers on {args.export}")
    print("| file | MB | prompts whose tokens all agree | mean agreeing prefix | llama.cpp s |")
    print("|---|---:|---:|---:|---:|")
    for path in sorted(args.export.glob("*.gguf")):
        if "-adapter-" in path.name or "-base-" in path.name:
            continue
        lm = LlamaCppLM(path)
        prompts = [lm.tokenize(text) for text in texts]
        if reference is None:
            clock = time.perf_counter()
            reference = transformers_greedy(args.export, prompts, args.tokens)
            reference_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        found = agreement(gguf_greedy(lm, prompts, args.tokens), reference, args.tokens)
        lm.close()
        print(f"| {path.name} | {path.stat().st_size / 2**20:.1f} | {found.whole}/{found.prompts} | "
              f"{found.mean_prefix:.1f} | {time.perf_counter() - clock:.1f} |")
    if reference is not None:
        print(f"transformers: {reference_seconds:.1f} s for the same prompts and tokens")

if __name__ == "__main__":
    main()
