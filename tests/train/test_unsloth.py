"""`model.backend: unsloth`: imported only when chosen, refused (exit 2) where it cannot run,
and given the recipe's model and adapter settings. Its training is checked on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from sftkey_lora.cli import main
from sftkey_lora.errors import UserError
from sftkey_lora.recipe import LoraSection, ModelConfig
from sftkey_lora.train import unsloth as unsloth_backend
from tests.support import QUICKSTART

UNSLOTH = ["--set", "model.backend=unsloth", "--set", "format.tags=text"]  # no added tag rows


def test_without_cuda_run_exits_2_before_anything_is_written(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on any machine without a GPU
    out = tmp_path / "run"
    assert main(["run", str(QUICKSTART), *UNSLOTH, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.backend: unsloth needs a CUDA GPU" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_the_dry_run_needs_no_gpu_and_leaves_checkpointing_to_unsloth(capsys) -> None:
    assert main(["run", str(QUICKSTART), *UNSLOTH, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [stage["training_args"]["gradient_checkpointing"] for stage in plan["stages"]] == [False, False]


@pytest.mark.parametrize(("override", "named"), [
    ("training.mode=full", "training.mode: lora"),
    ("format.tags=added_tokens", "format.tags: text"),
])
def test_what_unsloth_cannot_train_is_refused(override: str, named: str, capsys) -> None:
    assert main(["run", str(QUICKSTART), *UNSLOTH, "--set", override,
                 "--set", "model.quantization=none", "--dry-run"]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.slow
def test_the_default_backend_never_imports_unsloth(tmp_path: Path) -> None:
    """A stand-in `unsloth` on the path would announce any import of it."""
    (tmp_path / "unsloth.py").write_text("raise SystemExit('unsloth was imported')\n")
    code = ("import sftkey_lora.cli, sftkey_lora.pipeline, sftkey_lora.train.stage, "
            "sftkey_lora.bench.worker; "
            "from sftkey_lora.cli import main; "
            f"raise SystemExit(main(['run', {str(QUICKSTART)!r}, '--dry-run']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-1500:]
    assert "unsloth was imported" not in done.stderr


class FakeFastLanguageModel:
    """Records what the backend asks of unsloth's API."""

    calls: dict[str, dict] = {}

    @classmethod
    def from_pretrained(cls, **kwargs):
        cls.calls["from_pretrained"] = kwargs
        embedding = types.SimpleNamespace(num_embeddings=600)
        def resize(n: int) -> None:
            cls.calls["resize"] = {"n": n}

        model = types.SimpleNamespace(get_input_embeddings=lambda: embedding, resize_token_embeddings=resize)
        return model, object()

    @classmethod
    def get_peft_model(cls, model, **kwargs):
        cls.calls["get_peft_model"] = kwargs
        return model


def test_the_recipes_settings_reach_unsloth(monkeypatch) -> None:
    monkeypatch.setattr(unsloth_backend, "cuda_available", lambda: True)
    fake = types.SimpleNamespace(FastLanguageModel=FakeFastLanguageModel)
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    unsloth_backend.unsloth_lora_model(
        ModelConfig(name_or_path="org/model", revision="abc", quantization="nf4", backend="unsloth"),
        LoraSection(r=8, alpha=16, dropout=0.0), "bf16", vocab_size=604, max_length=300, seed=7,
        gradient_checkpointing=True)
    calls = FakeFastLanguageModel.calls
    loaded, adapter = calls["from_pretrained"], calls["get_peft_model"]
    assert loaded["model_name"] == "org/model" and loaded["revision"] == "abc"
    assert loaded["load_in_4bit"] is True and loaded["max_seq_length"] == 300
    assert str(loaded["dtype"]) == "torch.bfloat16"
    assert loaded["trust_remote_code"] is False
    assert calls["resize"] == {"n": 604}
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and adapter["lora_dropout"] == 0.0
    assert adapter["target_modules"] == unsloth_backend.ALL_LINEAR
    assert adapter["use_gradient_checkpointing"] == "unsloth" and adapter["random_state"] == 7


def test_unsloth_missing_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setattr(unsloth_backend, "cuda_available", lambda: True)
    monkeypatch.setitem(sys.modules, "unsloth", None)  # import unsloth raises ImportError
    with pytest.raises(UserError, match=r"pip install 'sftkey-lora\[unsloth\]'"):
        unsloth_backend.require_unsloth()
