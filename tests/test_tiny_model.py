"""The built-in offline model: loads through from_pretrained, is competent, is reproducible."""

from pathlib import Path

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.tiny_model import build_tiny, untagged_accuracy
from sftkey_lora.train.loading import resolve_model_path

TINY = Path(resolve_model_path("builtin:tiny"))


def test_shipped_files_are_small_safetensors() -> None:
    files = {p.name: p.stat().st_size for p in TINY.iterdir()}
    assert "model.safetensors" in files and not any(n.endswith((".bin", ".pt")) for n in files)
    assert sum(files.values()) <= 10 * 1024 * 1024


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(TINY), AutoTokenizer.from_pretrained(TINY)


def test_loads_as_llama_with_a_byte_level_bpe_tokenizer(tiny_model) -> None:
    model, tokenizer = tiny_model
    assert model.config.model_type == "llama"
    assert tokenizer.backend_tokenizer.model.__class__.__name__ == "BPE"
    text = "Zoë pays 12 € <Thinking>"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@pytest.mark.slow
def test_pretraining_gave_real_competence(tiny_model) -> None:
    """Untagged held-out problems: the shipped model solves many, a fresh one none."""
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_model
    fresh = AutoModelForCausalLM.from_config(model.config)
    trained = untagged_accuracy(model, tokenizer, n=20, seed=0)
    assert trained >= 0.8
    assert untagged_accuracy(fresh, tokenizer, n=5, seed=0) == 0.0


@pytest.mark.slow
def test_build_is_deterministic_and_reproduces_the_shipped_tokenizer(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        build_tiny(out, steps=2, n_problems=64, eval_problems=1)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_text() == (TINY / "tokenizer.json").read_text()
    # A rebuild replaces the model whole, whatever a killed build left in its temporary folder.
    stale = tmp_path / ".a.tmp"
    stale.mkdir()
    (stale / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    build_tiny(first, steps=2, n_problems=64, eval_problems=1)
    assert sorted(path.name for path in first.iterdir()) == sorted(path.name for path in second.iterdir())
    assert not stale.exists()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no config.json"):
        build_tiny(notes, steps=2)
