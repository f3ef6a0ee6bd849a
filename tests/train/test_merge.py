"""The merge: KL measures what changed, and the base is the one the recipe or the lower KL
chose. On an adapter made here, not a training run."""

from __future__ import annotations

import pytest
import torch

from sftkey_lora.prep.collate import Collator, batches, pad_id
from sftkey_lora.prep.prepare import encode_examples
from sftkey_lora.recipe import FormatConfig, LoraSection, ModelConfig
from sftkey_lora.train.loading import load_model
from sftkey_lora.train.lora import attach_lora
from sftkey_lora.train.loss import segment_losses
from sftkey_lora.train.merge import kl_and_losses, merge_stage1
from sftkey_lora.train.plan import MergeStep

QUANTIZED = ModelConfig(quantization="nf4")
SIXTEEN_BIT = ModelConfig(quantization="none")


@pytest.fixture(scope="module")
def probe(tiny_tokenizer):
    from sftkey_lora.data import DataReport
    from sftkey_lora.data.synthetic import synthetic_split

    rows = encode_examples(synthetic_split("test", 1, 4, 5), tiny_tokenizer, FormatConfig(system_prompt=""),
                           True, DataReport("t", "test"))
    return list(batches(rows, 4, Collator(pad_id(tiny_tokenizer), "full", with_segments=True)))


def adapter(folder, model_cfg: ModelConfig, vocab: int):
    """A stage-1 adapter whose B matrices are not zero, so that it changes the model."""
    torch.manual_seed(0)
    model = attach_lora(load_model(model_cfg, "fp32", vocab_size=vocab), LoraSection(r=4),
                        gradient_checkpointing=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.save_pretrained(folder)
    return folder


def test_identical_models_have_zero_kl_and_a_change_is_measured(tiny_tokenizer, probe) -> None:
    base = load_model(SIXTEEN_BIT, "fp32", vocab_size=len(tiny_tokenizer)).eval()
    assert kl_and_losses(base, base, probe)[0] == 0.0
    other = load_model(SIXTEEN_BIT, "fp32", vocab_size=len(tiny_tokenizer)).eval()
    with torch.no_grad():
        other.get_output_embeddings().weight.mul_(1.5)  # sharper distributions
    assert kl_and_losses(base, other, probe)[0] > 1e-3


@pytest.mark.parametrize(("model_cfg", "choice", "candidates"), [
    (QUANTIZED, "auto", {"original", "nf4"}),
    (QUANTIZED, "original", {"original", "nf4"}),
    (SIXTEEN_BIT, "auto", {"original"}),  # the adapter saw the original weights: nothing to compare
])
def test_the_merge_keeps_the_chosen_base(tmp_path, tiny_tokenizer, probe, model_cfg, choice,
                                         candidates) -> None:
    vocab = len(tiny_tokenizer)
    step = MergeStep(model_cfg, adapter(tmp_path / "stage1", model_cfg, vocab), tmp_path / "stage1-merged",
                     choice, "fp32", probe_batch_size=4, next_base=model_cfg)
    outcome = merge_stage1(step, tiny_tokenizer, probe)
    assert set(outcome.kl) == candidates
    if choice == "auto":
        assert outcome.base == min(outcome.kl, key=outcome.kl.get) and outcome.chosen_by == "lowest KL"
    else:
        assert outcome.base == choice and outcome.chosen_by == "recipe merge.base"
    assert (step.output / "model.safetensors").is_file() and (step.output / "tokenizer.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stage1", "stage1-merged"]  # no temporaries
    # The merge, re-loaded as stage 2 loads it, is the stage-1 model within the recorded KL.
    from peft import PeftModel

    stage1 = load_model(model_cfg, "fp32", vocab_size=vocab)
    stage1 = PeftModel.from_pretrained(stage1, str(step.adapter)).eval()
    merged = load_model(model_cfg.model_copy(update={"name_or_path": str(step.output)}), "fp32",
                        vocab_size=vocab).eval()
    kl, losses = kl_and_losses(stage1, merged, probe)
    assert kl == pytest.approx(outcome.kl[outcome.base], rel=1e-3, abs=1e-7)
    # Its held-out losses, recorded for every candidate, are the re-loaded merge's own.
    assert set(outcome.heldout) == candidates
    expected = segment_losses(merged, probe)
    for segment in ("thinking", "key"):
        assert outcome.heldout[outcome.base][segment] == pytest.approx(losses[segment], abs=1e-5)
        assert losses[segment] == pytest.approx(expected[segment], abs=1e-5)


def test_over_16_bit_merged_weights_the_nf4_round_trip_is_the_stage1_model(tmp_path, tiny_tokenizer,
                                                                           probe) -> None:
    """`merge.requantize: false`: stage 2 loads the merge in 16 bits. The round trip plus the
    adapter's delta is then exactly what stage 1 computed (no second rounding), so its KL is
    float error and `auto` takes it; the original weights differ by the NF4 error."""
    vocab = len(tiny_tokenizer)
    step = MergeStep(QUANTIZED, adapter(tmp_path / "stage1", QUANTIZED, vocab), tmp_path / "stage1-merged",
                     "auto", "fp32", probe_batch_size=4, next_base=SIXTEEN_BIT)
    outcome = merge_stage1(step, tiny_tokenizer, probe)
    assert outcome.kl["nf4"] < 1e-6 < outcome.kl["original"]
    assert outcome.base == "nf4"
