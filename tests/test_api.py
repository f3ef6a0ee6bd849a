"""The Python API: the README's example runs as written, and the CLI's calls are the API's."""

from __future__ import annotations

import json
import re
import shutil

import pytest

import sftkey_lora
from sftkey_lora import UserError, load_recipe
from tests.support import QUICKSTART, ROOT


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "recipes").mkdir()
    shutil.copy(QUICKSTART, tmp_path / "recipes" / QUICKSTART.name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    acc = float(printed[0])
    delta, p, verdict = printed[1].split(" ", 2)
    pair = namespace["pair"]
    assert pair.n == 8 and namespace["record"].steps["stage2"]["status"] == "complete"
    base = json.loads((tmp_path / "evals" / "api-demo-base" / "metrics.json").read_text())["sftkey_synthetic"]
    assert float(delta) == pytest.approx(acc - base["acc"]) and 0 <= float(p) <= 1
    assert verdict in ("better", "worse", "no significant difference")
    assert printed[2] == "adapters/api-demo/final" and (tmp_path / printed[2] / "model.safetensors").is_file()


def test_the_api_names_stay_functions_once_every_module_is_loaded() -> None:
    """A submodule named like an API function would replace it on the package when imported."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(sftkey_lora.__path__):
        if module.name not in ("__main__",):
            importlib.import_module(f"sftkey_lora.{module.name}")
    from sftkey_lora import api

    for name in sftkey_lora.__all__:
        assert getattr(sftkey_lora, name) is getattr(api, name, None) or name in ("Recipe", "UserError")
        assert callable(getattr(sftkey_lora, name)), name


def test_overrides_are_a_mapping_or_the_cli_items() -> None:
    overrides = {"data.limit": 100, "format.system_prompt": "Hi: x", "eval.tasks": []}
    as_mapping = load_recipe(QUICKSTART, overrides)
    as_items = load_recipe(QUICKSTART, ["data.limit=100", "format.system_prompt='Hi: x'", "eval.tasks=[]"])
    assert as_mapping == as_items and as_mapping.data.limit == 100
    assert as_mapping.format.system_prompt == "Hi: x"  # a value is taken as it is, never parsed
    with pytest.raises(UserError, match="lora.rank"):
        load_recipe(QUICKSTART, {"lora.rank": 8})


def test_the_package_exports_the_api_without_loading_torch() -> None:
    import subprocess
    import sys

    assert set(sftkey_lora.__all__) == {"Recipe", "UserError", "compare", "evaluate", "export", "load_recipe",
                                        "run", "set_verbosity", "significance"}
    check = ("import sys, sftkey_lora; "
             "print(sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT,
                            check=True)
    assert loaded.stdout.strip() == "[]"


def test_evaluating_nothing_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="--limit: must be at least 1"):
        sftkey_lora.evaluate(tmp_path, limit=0)
