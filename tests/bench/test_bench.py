"""`sftkey-lora bench`: each contender in its own process, and the report's ratios are ours over
theirs. (Its figures are measured by running it;
nothing here times anything.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sftkey_lora.bench.contest import check_trl_runs_here, ratios, setting
from sftkey_lora.cli import main
from sftkey_lora.errors import UserError

pytestmark = pytest.mark.takes(60)

SMALL = ["--vocab-size", "3000", "--hidden-size", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2",
         "--intermediate-size", "128", "--seq-len", "64", "--prompt-tokens", "8", "--key-tokens", "6",
         "--steps", "2", "--warmup-steps", "1", "--quantization", "none"]


@pytest.mark.slow
def test_the_command_measures_the_contenders_it_is_given() -> None:
    """The command's own path: options to workload, contenders named, table and JSON. Every
    contender on the same labels is checked on gpu-check's smoke contest (tests/test_gpu_check.py),
    which runs the same measurements."""
    command = [sys.executable, "-m", "sftkey_lora", "bench", "--json", "--contenders", "sftkey,floor", *SMALL]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report) == {"stage1", "stage2"}
    for stage in ("stage1", "stage2"):
        figures = report[stage]["contenders"]
        assert set(figures) == {"sftkey", "floor"}
        assert report[stage]["floor_step_time_ratio"] == pytest.approx(
            figures["sftkey"]["step_time_s"] / figures["floor"]["step_time_s"], abs=1e-3)
        for result in figures.values():
            assert len(result["losses"]) == 3  # one warm-up step and two timed ones
            assert result["step_time_s"] > 0 and result["peak_mem_mb"] > 0
    # Stage 1 learns every response token, stage 2 the key only: different losses.
    first, second = (report[stage]["contenders"]["sftkey"]["losses"] for stage in ("stage1", "stage2"))
    assert first != second
    assert any(line.startswith("| stage2 | floor |") for line in done.stdout.splitlines())


def test_the_setting_says_how_trl_scores_where_it_runs() -> None:
    from sftkey_lora.bench.workload import Workload

    said = setting(Workload(), ["sftkey", "trl"])
    assert "every position, in chunks" in said if not torch.cuda.is_available() else "(Triton)" in said
    assert "TRL" not in setting(Workload(), ["sftkey", "floor"])


def measured(step: float, memory: float, loss: float) -> dict:
    return {"step_time_s": step, "tokens_per_s": 100 / step, "peak_mem_mb": memory, "losses": [loss]}


def test_ratios_are_ours_over_theirs_and_name_the_baseline() -> None:
    out = ratios({"sftkey": measured(1.0, 500, 2.0), "trl": measured(4.0, 1000, 2.0),
                  "plain": measured(2.0, 2000, 2.0)})
    assert out["step_time_ratio"] == 0.25 and out["peak_mem_ratio"] == 0.5
    assert out["plain_step_time_ratio"] == 0.5 and out["plain_peak_mem_ratio"] == 0.25
    assert out["tokens_per_s_ratio"] == 4.0
    assert out["losses_agree"]
    assert not ratios({"sftkey": measured(1, 1, 2.0), "trl": measured(1, 1, 2.5)})["losses_agree"]


def test_trl_before_1_16_needs_a_gpu() -> None:
    with pytest.raises(UserError, match="trl>=1.16"):
        check_trl_runs_here("1.15.0", cuda=False)
    check_trl_runs_here("1.15.0", cuda=True)
    check_trl_runs_here("1.16.0", cuda=False)


@pytest.mark.parametrize(("args", "named"), [
    (["--contenders", "trl"], "--contenders"),
    (["--contenders", "sftkey,deepspeed"], "--contenders"),
    (["--seq-len", "20", "--prompt-tokens", "10", "--key-tokens", "10"], "seq_len"),
    (["--quantization", "int3"], "quantization"),
    (["--steps", "0"], "steps"),
    (["--model", "/no/such/model"], "model: /no/such/model is not a model directory"),
])
def test_bad_bench_options_exit_2_naming_the_option(args, named, capsys) -> None:
    assert main(["bench", *args]) == 2
    assert named in capsys.readouterr().err


def test_a_real_models_workload_takes_its_dimensions(smollm2_dir) -> None:
    """SmolLM2-135M: 30 layers of width 576, 9 heads over 3, a 49,152-row vocabulary."""
    from sftkey_lora.bench.workload import Workload

    workload = Workload(model=str(smollm2_dir)).of_model()
    assert (workload.layers, workload.hidden_size, workload.heads, workload.kv_heads,
            workload.intermediate_size, workload.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert Workload().of_model() == Workload()


def test_the_floor_has_no_loss_to_agree_with() -> None:
    out = ratios({"sftkey": measured(1.0, 500, 2.0), "trl": measured(4.0, 1000, 2.0),
                  "floor": measured(0.8, 400, 0.01)})
    assert out["losses_agree"] and out["floor_step_time_ratio"] == 1.25
