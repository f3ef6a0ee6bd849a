"""Safe loading and writing, checked on the source itself and on what a run writes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sftkey_lora.errors import UserError
from tests.support import ROOT

FORBIDDEN = ("eval", "exec", "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "os.system")
SOURCES = sorted((ROOT / "sftkey_lora").rglob("*.py")) + sorted((ROOT / "eval_tasks").glob("*.py"))


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    """Every call in a file, with the dotted name it is made through (`torch.load`, `eval`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_or_execution(path: Path) -> None:
    for name, call in calls(path):
        where = f"{path.relative_to(ROOT)}:{call.lineno}: {name}"
        assert name not in FORBIDDEN, where
        if name == "torch.load":
            flag = keyword(call, "weights_only")
            assert isinstance(flag, ast.Constant) and flag.value is True, where
        shell = keyword(call, "shell")
        assert not (isinstance(shell, ast.Constant) and shell.value), where
        remote = keyword(call, "trust_remote_code")
        assert not (isinstance(remote, ast.Constant) and remote.value), where  # only the recipe may say so
        serialization = keyword(call, "safe_serialization")
        assert not (isinstance(serialization, ast.Constant) and serialization.value is False), where


@pytest.mark.parametrize("recipe_says", [None, False, True])
def test_remote_code_is_trusted_only_when_the_recipe_says_so(recipe_says, monkeypatch) -> None:
    """What reaches `from_pretrained` of the tokenizer and of the model is the recipe's choice,
    false when the recipe says nothing."""
    import transformers

    from sftkey_lora.recipe import validate_recipe
    from sftkey_lora.train.loading import load_tokenizer, pretrained_model

    asked: list[bool] = []

    def from_pretrained(*args, trust_remote_code=None, **kwargs):
        asked.append(trust_remote_code)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    model = {} if recipe_says is None else {"trust_remote_code": recipe_says}
    cfg = validate_recipe({"model": {**model, "name_or_path": "org/model"}}).model
    for load in (load_tokenizer, lambda c: pretrained_model(c, vocab_size=0)):
        with pytest.raises(UserError):
            load(cfg)
    assert asked == [bool(recipe_says)] * 2


@pytest.mark.slow
def test_a_run_writes_weights_as_safetensors_only(small_run) -> None:
    run = small_run[1].run_dir
    weights = [p for p in run.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), weights
