"""Two processes (torchrun, gloo on a CPU) train the full-parameter quickstart like one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftkey_lora.pipeline import run_recipe
from sftkey_lora.recipe import load_recipe
from tests.support import ROOT

FULL = ROOT / "recipes" / "quickstart-full.yaml"
# A global batch of 8: one process of 8, or two of 4.
SHORT = ["data.synthetic.n_train=72", "data.holdout=8", "format.system_prompt=",
         "training.logging_steps=2", "training.save_steps=100", "stages.stage1.training.max_steps=6",
         "stages.stage2.training.max_steps=4", "eval.tasks=[]",
         "training.precision=fp32",  # as on the CPU, also where the single process has a GPU
         "training.shuffle=false"]  # in order: each step sees the same 8 examples either way


def heldout_key_losses(run: dict, stage: str) -> list[float]:
    history = run["steps"][stage]["log_history"]
    return [entry["heldout_key_loss"] for entry in history if "heldout_key_loss" in entry]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The short full-parameter run in one process, a global batch of 8."""
    return run_recipe(load_recipe(FULL, SHORT + ["training.batch_size=8"]),
                      tmp_path_factory.mktemp("one") / "run").data


def two_processes(launcher: list[str], output: Path) -> tuple[dict, str]:
    """The same run in two processes of 4 on the CPU (gloo) on any machine, as the single
    one is with fp32; run.json and what was printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", *launcher, "-m", "sftkey_lora", "run", str(FULL),
               "--output", str(output), *[f"--set={item}" for item in SHORT + ["training.batch_size=4"]]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((output / "run.json").read_text()), done.stderr


def assert_same_curve(single: dict, double: dict) -> None:
    assert double["world_size"] == 2 and single["world_size"] == 1
    for stage in ("stage1", "stage2"):
        assert double["steps"][stage]["status"] == "complete"
        assert double["steps"][stage]["steps"] == single["steps"][stage]["steps"]
        ones, twos = heldout_key_losses(single, stage), heldout_key_losses(double, stage)
        assert len(ones) == len(twos)
        for one, two in zip(ones, twos, strict=True):  # the same curve, up to float summation order
            assert abs(one - two) <= 1e-3 * max(one, two), (stage, ones, twos)


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_curve(single, tmp_path) -> None:
    double, _ = two_processes(["torch.distributed.run", "--standalone", "--nproc_per_node", "2"], tmp_path)
    assert_same_curve(single, double)
    assert (tmp_path / "stage2" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_fsdp_launch_on_a_cpu_trains_unsharded_and_says_so(single, tmp_path) -> None:
    """accelerate shards on GPUs only: the shipped FSDP configuration, on 2 CPU processes (its
    GPU-only options off), trains as data parallel; the run says so and follows the curve."""
    config = ["accelerate.commands.launch", "--config_file", str(ROOT / "recipes/accelerate/fsdp-8gpu.yaml"),
              "--num_processes", "2", "--mixed_precision", "no", "--fsdp_sync_module_states", "false",
              "--fsdp_cpu_ram_efficient_loading", "false"]
    double, printed = two_processes(config, tmp_path)
    assert_same_curve(single, double)
    assert printed.count("warning: the launch asks for FSDP, which accelerate runs on GPUs only") == 2


def test_sharded_training_is_recognised(monkeypatch, caplog) -> None:
    """FSDP and ZeRO-3 keep the head's weights whole only inside the forward: the loss then
    falls back to full logits. Without a GPU accelerate does not shard, and the run says so."""
    import torch

    from sftkey_lora.runtime.distributed import requested_engine, say_when_not_sharded, sharded

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not sharded() and requested_engine() is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert sharded() and requested_engine() == "DeepSpeed"
    say_when_not_sharded()
    assert not caplog.records
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not sharded()
    say_when_not_sharded()
    assert "the launch asks for DeepSpeed, which accelerate runs on GPUs only" in caplog.text


def test_more_processes_than_gpus_is_a_launch_mistake(monkeypatch) -> None:
    import torch

    from sftkey_lora.errors import UserError
    from sftkey_lora.runtime.distributed import check_one_gpu_per_process

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    check_one_gpu_per_process()  # the first process has its GPU
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match="2 processes were started on this machine, which has 1 GPU"):
        check_one_gpu_per_process()
