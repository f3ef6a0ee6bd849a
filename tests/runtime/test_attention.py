"""Grouped-query attention on a CPU (runtime/attention.py): the same tokens and gradients as
the library's `sdpa`, chosen only where attention is grouped, never written into a saved config."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from sftkey_lora.recipe import ModelConfig
from sftkey_lora.runtime.attention import NAME
from sftkey_lora.train.loading import load_model

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's attention")


def tiny_llama(folder, kv_heads: int):
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def loaded(folder, quantization: str = "none"):
    cfg = ModelConfig(name_or_path=str(folder), quantization=quantization)
    return load_model(cfg, "fp32", vocab_size=97).eval()


@cpu_only
@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_grouped_heads_give_the_librarys_tokens_and_gradients(tmp_path, quantization: str) -> None:
    ours = loaded(tiny_llama(tmp_path / "m", kv_heads=2), quantization)
    assert ours.config._attn_implementation == NAME
    library = loaded(tmp_path / "m", quantization)
    library.set_attn_implementation("sdpa")
    # Left-padded prompts of different lengths: the padding mask is what made the library copy.
    ids = torch.randint(3, 97, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :5] = mask[2, :2] = 0
    with torch.inference_mode():
        tokens = [model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                 pad_token_id=0) for model in (ours, library)]
        logits = [model(input_ids=ids, attention_mask=mask).logits for model in (ours, library)]
    assert torch.equal(tokens[0], tokens[1])
    assert (logits[0] - logits[1]).abs().max() < 1e-5
    if quantization == "none":
        grads = []
        for model in (ours, library):
            model.zero_grad()
            model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
            grads.append(model.model.layers[0].self_attn.k_proj.weight.grad)
        assert torch.allclose(grads[0], grads[1], atol=1e-6)
    ours.save_pretrained(tmp_path / "saved")
    assert NAME not in (tmp_path / "saved" / "config.json").read_text()  # a reader gets its default


@cpu_only
def test_ungrouped_heads_keep_the_librarys_attention(tmp_path) -> None:
    assert loaded(tiny_llama(tmp_path / "m", kv_heads=4)).config._attn_implementation == "sdpa"
