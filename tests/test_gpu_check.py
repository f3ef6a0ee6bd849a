"""scripts/gpu-check --smoke: every part's code path at tiny sizes on a CPU, so the command
works the first time a GPU appears; what needs CUDA is recorded as skipped, with why."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.takes(240)]


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
