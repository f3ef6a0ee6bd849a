"""Padding-free packing: one row per batch, positions restarting per example, attention kept
inside each example, and the same loss as padded batches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sftkey_lora.data import DataReport
from sftkey_lora.data.synthetic import synthetic_split
from sftkey_lora.prep.collate import Collator, pad_id
from sftkey_lora.prep.masks import IGNORE
from sftkey_lora.prep.prepare import encode_examples
from sftkey_lora.recipe import FormatConfig, ModelConfig
from sftkey_lora.train.loss import LabelledLogitsLoss, causal_lm_loss
from tests.support import model_on_cpu


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    examples = synthetic_split("train", n_train=3, n_test=1, seed=4)
    return encode_examples(examples, tiny_tokenizer, FormatConfig(system_prompt=""), tagged=True,
                           report=DataReport("t", "train"))


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return model_on_cpu(ModelConfig(quantization="none"), len(tiny_tokenizer))


def test_a_packed_batch_is_one_row_with_positions_per_example(tiny_tokenizer, rows) -> None:
    batch = Collator(pad_id(tiny_tokenizer), "key", packed=True)(rows)
    lengths = [len(row.input_ids) for row in rows]
    assert batch["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in batch
    expected = [position for length in lengths for position in range(length)]
    assert batch["position_ids"][0].tolist() == expected
    labelled = [label for row in rows for label in row.labels("key")]
    assert batch["labels"][0].tolist() == labelled  # every example's first token is prompt: no label lost


@pytest.mark.parametrize("use_cache", [False, True])
def test_attention_stays_inside_each_example(tiny_tokenizer, rows, model, monkeypatch, use_cache) -> None:
    """Whatever the model's config says of its KV cache: transformers finds packed examples from
    the position ids only when no cache is built, so the batch itself turns the cache off."""
    monkeypatch.setattr(model.config, "use_cache", use_cache)
    collate = Collator(pad_id(tiny_tokenizer), "full", packed=True)
    first = len(rows[0].input_ids)
    changed = dataclasses.replace(rows[0], input_ids=(rows[0].input_ids + 7) % 500)

    def later_logits(batch: dict) -> torch.Tensor:
        inputs = {name: value for name, value in batch.items() if name != "labels"}  # as the Trainer does
        with torch.no_grad():
            return model(**inputs).logits[0, first:]

    assert torch.allclose(later_logits(collate(rows)), later_logits(collate([changed, *rows[1:]])), atol=1e-5)
    # Control: one long sequence (positions not restarting) lets the later examples see the first.
    running = {**collate(rows), "position_ids": torch.arange(sum(len(r.input_ids) for r in rows))[None]}
    running_changed = {**collate([changed, *rows[1:]]), "position_ids": running["position_ids"]}
    assert not torch.allclose(later_logits(running), later_logits(running_changed), atol=1e-5)


@pytest.mark.parametrize("labels", ["full", "key"])
def test_packed_loss_and_gradients_equal_padded(tiny_tokenizer, rows, model, labels) -> None:
    def loss_and_grads(packed: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        batch = Collator(pad_id(tiny_tokenizer), labels, hidden_only=True, packed=packed)(rows)
        targets = batch.pop("labels")
        loss = LabelledLogitsLoss(model.get_output_embeddings())(model(**batch), targets)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    padded_loss, padded_grads = loss_and_grads(packed=False)
    packed_loss, packed_grads = loss_and_grads(packed=True)
    assert torch.allclose(packed_loss, padded_loss, rtol=1e-5)
    for packed, padded in zip(packed_grads, padded_grads, strict=True):  # float noise, relative to scale
        assert (packed - padded).abs().max() <= 1e-4 * padded.abs().max() + 1e-6
    # And the same as the reference loss over full logits of the padded batch.
    padded = Collator(pad_id(tiny_tokenizer), labels)(rows)
    with torch.no_grad():
        outputs = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
    reference = causal_lm_loss(outputs, padded["labels"])
    assert torch.allclose(packed_loss, reference, rtol=1e-5)
    assert int((padded["labels"] != IGNORE).sum()) > 0
