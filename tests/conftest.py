"""Shared fixtures. Tests never touch the network: the hub is offline for all of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from sftkey_lora.loading import load_tokenizer
    from sftkey_lora.recipe import FormatConfig, ModelConfig

    return load_tokenizer(ModelConfig(), FormatConfig())


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from sftkey_lora.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
