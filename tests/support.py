"""What several test modules share: paths, and the overrides that make a run small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkey_lora.recipe import ModelConfig
from sftkey_lora.rundir.outcomes import Change, MergeOutcome, StageOutcome

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
QUICKSTART_FULL = ROOT / "recipes" / "quickstart-full.yaml"

# A few steps of each stage on short sequences: enough to exercise every step of a run.
SMALL = [
    "data.synthetic.n_train=56", "data.holdout=8", "format.system_prompt=", "training.batch_size=8",
    "training.logging_steps=2", "training.save_steps=2", "stages.stage1.training.max_steps=6",
    "stages.stage2.training.max_steps=4", "eval.tasks=[]",
]
# The shared run also ends with a short evaluation.
SMALL_EVAL = ["eval.tasks=[sftkey_synthetic]", "eval.limit=4", "eval.max_gen_toks=96"]


def as_set_flags(overrides: list[str]) -> list[str]:
    """Recipe overrides as the CLI's `--set=key=value` arguments."""
    return [f"--set={item}" for item in overrides]


# What complete steps record, for tests of what reads run.json.
MERGED = MergeOutcome(seconds=2.0, kl={"original": 1.1e-3, "nf4": 3.2e-4}, base="nf4", chosen_by="lowest KL")


def stage_outcome(key_after: float = 0.5) -> StageOutcome:
    return StageOutcome(
        labels="full", logits="labelled positions", steps=6, resumed_from=None, seconds=12.0,
        train_seconds=10.0, tokens=3000, tokens_per_second=300.0, peak_memory_mb=900.0,
        memory_kind="process_peak_rss", train_loss=1.5, heldout_key_loss=Change(before=9.0, after=key_after),
        heldout_thinking_loss=Change(before=8.0, after=2.0),
        log_history=[{"step": 0, "heldout_key_loss": 9.0}, {"step": 6, "heldout_key_loss": key_after}])


def think_tags():
    """Model-native tags in the style of Qwen3 and DeepSeek-R1 distillations."""
    from sftkey_lora.tags import Tags

    return Tags(think_open="<think>", think_close="</think>", answer_open="<answer>",
                answer_close="</answer>")


def holdout_batches(recipe, segments: bool = False) -> list[dict]:
    """The held-out examples a run of `recipe` probes, encoded and batched as the run does
    (`segments`: with the thinking/key masks the held-out losses read)."""
    from sftkey_lora.data import load_examples
    from sftkey_lora.pipeline import split_holdout
    from sftkey_lora.prep.collate import Collator, batches, pad_id
    from sftkey_lora.prep.prepare import encode_examples
    from sftkey_lora.train.loading import run_tokenizer
    from sftkey_lora.train.plan import plan_tokenizer

    tokenizer, _ = run_tokenizer(plan_tokenizer(recipe))
    examples, report = load_examples(recipe.data, tags=recipe.format.tag_strings)
    rows = encode_examples(examples, tokenizer, recipe.format, True, report)
    _, holdout = split_holdout(rows, recipe.data.holdout, recipe.stage("stage1").training.seed)
    return list(batches(holdout, 8, Collator(pad_id(tokenizer), "full", with_segments=segments)))


def model_on_cpu(cfg: ModelConfig, vocab_size: int) -> Any:
    """The model as the kit loads it, but on the CPU in fp32 on any machine: the tests of the
    loss arithmetic compare at fp32 precision, which a GPU's TF32 matrix products would not."""
    import pytest
    import torch

    from sftkey_lora.train.loading import load_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        return load_model(cfg, "fp32", vocab_size=vocab_size)
