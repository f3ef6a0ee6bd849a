"""Adapters: which embedding rows train when tags are added as tokens."""

from __future__ import annotations

import pytest
import torch

from sftkey_lora.recipe import LoraSection
from sftkey_lora.train.lora import attach_lora, token_rows


def llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize(("tied", "expected"), [
    (True, {"model.embed_tokens"}),
    (False, {"model.embed_tokens", "lm_head"}),  # an untied head must learn the new rows too
])
def test_token_rows_cover_the_output_head_unless_tied(tied: bool, expected: set[str]) -> None:
    assert set(token_rows(llama(tied), [60, 61])) == expected
    assert token_rows(llama(tied), []) == {}


@pytest.mark.parametrize("tied", [True, False])
def test_only_the_new_rows_and_lora_train(tied: bool) -> None:
    model = attach_lora(llama(tied), LoraSection(r=2), gradient_checkpointing=False, new_token_ids=[60, 61])
    inputs = torch.tensor([[1, 60, 5, 61, 7]])
    model(input_ids=inputs, labels=inputs).loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable)
    assert any("trainable_tokens" in name for name in trainable)
    assert not any(name.endswith(("embed_tokens.weight", "lm_head.weight")) for name in trainable)
    assert len([n for n in trainable if "trainable_tokens" in n]) == (1 if tied else 2)


def test_unknown_target_modules_name_the_field() -> None:
    from sftkey_lora.errors import UserError

    with pytest.raises(UserError, match="lora.target_modules"):
        attach_lora(llama(True), LoraSection(target_modules=["no_such_proj"]), gradient_checkpointing=False)
