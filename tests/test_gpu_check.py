"""scripts/gpu-check --smoke: every part's code path at tiny sizes on a CPU, so the command
works the first time a GPU appears; what needs CUDA is recorded as skipped, with why."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.support import ROOT


@pytest.mark.slow
@pytest.mark.takes(240)
def test_the_smoke_run_records_every_part(tmp_path) -> None:
    command = [sys.executable, str(ROOT / "scripts" / "gpu-check"), "--out", str(tmp_path), "--smoke"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    status = {part["part"]: part["status"] for part in report["parts"]}
    assert status == {"contest": "ok", "recipe-7b": "ok", "full-1.5b": "ok", "quickstart": "ok",
                      "tests": "ok", "fsdp-1": "skipped: FSDP's configuration names GPUs (use_cpu: false)"}
    tests = next(part["figures"] for part in report["parts"] if part["part"] == "tests")
    # The suite runs them; the smoke run finds them ("37/39 tests collected (2 deselected) in 7.4s").
    assert re.match(r"[1-9]\d*(/\d+)? tests collected ", tests["summary"]), tests["summary"]
    contest = next(part["figures"] for part in report["parts"] if part["part"] == "contest")
    assert contest["skipped"] == {"stage1 unsloth": "skipped: unsloth needs a CUDA GPU",
                                  "stage2 unsloth": "skipped: unsloth needs a CUDA GPU"}
    for stage in ("stage1", "stage2"):
        figures = contest[stage]["contenders"]
        assert set(figures) == {"sftkey", "trl", "plain", "floor"}
        # The same weights, batches and labels: TRL's completion mask and the plain Trainer's
        # labels select the tokens ours does, so each step's loss is the same.
        assert contest[stage]["losses_agree"]
        for other in ("trl", "plain"):
            assert figures[other]["losses"] == pytest.approx(figures["sftkey"]["losses"], rel=1e-4)
        # The floor has no head: its step is the backbone's alone, below every trainer's.
        assert figures["floor"]["peak_mem_mb"] < figures["plain"]["peak_mem_mb"]
        ours, trl, plain = figures["sftkey"], figures["trl"], figures["plain"]
        assert contest[stage]["step_time_ratio"] == pytest.approx(ours["step_time_s"] / trl["step_time_s"],
                                                                  abs=1e-3)
        assert contest[stage]["plain_peak_mem_ratio"] == pytest.approx(
            ours["peak_mem_mb"] / plain["peak_mem_mb"], abs=1e-3)
    recipe = next(part["figures"] for part in report["parts"] if part["part"] == "recipe-7b")
    assert list(recipe) == ["stage1", "merge", "stage2"]
    assert all(recipe[step]["peak_memory_mb"] > 0 for step in recipe)
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert "| stage2 | floor |" in markdown and "| recipe-7b | ok |" in markdown


def gpu_check_module(monkeypatch):
    """scripts/gpu-check, a script without a .py name, imported as a module (its dataclass
    looks itself up in sys.modules)."""
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(ROOT / "scripts" / "gpu-check"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_check", loader))
    monkeypatch.setitem(sys.modules, "gpu_check", module)
    loader.exec_module(module)
    return module


def test_a_part_may_use_the_time_the_parts_before_it_left(tmp_path, monkeypatch) -> None:
    gpu_check = gpu_check_module(monkeypatch)
    now = [0.0]
    monkeypatch.setattr(gpu_check, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    given: dict[str, float] = {}

    def part(name: str, takes: float):
        def run(work, smoke, limit):
            given[name] = limit
            now[0] += min(takes, limit)
            if takes > limit:
                raise subprocess.TimeoutExpired(name, limit)
            return {"took": takes}
        return run

    monkeypatch.setattr(gpu_check, "PARTS", {"a": part("a", 60), "b": part("b", 200), "c": part("c", 10)})
    monkeypatch.setattr(gpu_check, "LIMITS", {"a": 100, "b": 50, "c": 30})
    outcomes = gpu_check.run_parts(["a", "b", "c"], tmp_path, smoke=False)
    # a leaves 40 s of its 100 to b; b runs out of its 90 and leaves nothing; c has its own 30.
    assert given == {"a": 100, "b": 90, "c": 30}
    assert [(o.status, o.seconds, o.limit_s) for o in outcomes] == [
        ("ok", 60, 100), ("skipped: over its 90 s", 90, 90), ("ok", 10, 30)]
    given.clear()
    gpu_check.run_parts(["a", "c"], tmp_path, smoke=True)  # on a CPU each part has the same, ample limit
    assert given == {"a": gpu_check.LIMIT_SMOKE, "c": gpu_check.LIMIT_SMOKE}
