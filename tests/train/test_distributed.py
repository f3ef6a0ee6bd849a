"""Two processes (torchrun, gloo on a CPU) train the full-parameter quickstart like one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_curve(tmp_path) -> None:
    single = run_recipe(load_recipe(FULL, SHORT + ["training.batch_size=8"]), tmp_path / "one").data
    # Both processes on the CPU (gloo) on any machine, as the single one is with fp32.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sftkey_lora", "run", str(FULL), "--output", str(tmp_path / "two"),
               *[f"--set={item}" for item in SHORT + ["training.batch_size=4"]]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "run.json").read_text())
    assert double["world_size"] == 2 and single["world_size"] == 1
    for stage in ("stage1", "stage2"):
        assert double["steps"][stage]["status"] == "complete"
        assert double["steps"][stage]["steps"] == single["steps"][stage]["steps"]
        ones, twos = heldout_key_losses(single, stage), heldout_key_losses(double, stage)
        assert len(ones) == len(twos)
        for one, two in zip(ones, twos, strict=True):  # the same curve, up to float summation order
            assert abs(one - two) <= 1e-3 * max(one, two), (stage, ones, twos)
    assert (tmp_path / "two" / "stage2" / "model.safetensors").is_file()


def test_sharded_training_is_recognised(monkeypatch) -> None:
    """FSDP and ZeRO-3 keep the head's weights whole only inside the forward: the loss then
    falls back to full logits."""
    from sftkey_lora.train.distributed import sharded

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert not sharded()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert sharded()


def test_more_processes_than_gpus_is_a_launch_mistake(monkeypatch) -> None:
    import torch

    from sftkey_lora.errors import UserError
    from sftkey_lora.train.distributed import check_one_gpu_per_process

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    check_one_gpu_per_process()  # the first process has its GPU
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UserError, match="2 processes were started on this machine, which has 1 GPU"):
        check_one_gpu_per_process()
