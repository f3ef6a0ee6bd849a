"""A run stopped by a diverging loss or a full disk: one message (exit 2), the last whole
checkpoint kept, and the same command resumes from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftkey_lora.rundir.files import is_whole
from sftkey_lora.rundir.layout import RunLayout
from tests.support import QUICKSTART, SMALL

STAGE1_STEPS = ["--set=stages.stage1.training.max_steps=8"]


def run_args(run_dir: Path) -> list[str]:
    return ["run", str(QUICKSTART), "--output", str(run_dir), *[f"--set={item}" for item in SMALL],
            *STAGE1_STEPS]


def stage1_status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["steps"]["stage1"]["status"]


@pytest.mark.slow
def test_a_nan_loss_stops_the_stage_naming_stage_and_step(cli, tmp_path, monkeypatch) -> None:
    from sftkey_lora.train.loss import LabelledLogitsLoss

    real = LabelledLogitsLoss.__call__
    calls = []

    def turns_nan_at_step_5(self, outputs, labels, num_items_in_batch=None):
        calls.append(1)
        loss = real(self, outputs, labels, num_items_in_batch=num_items_in_batch)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(LabelledLogitsLoss, "__call__", turns_nan_at_step_5)
    run_dir = tmp_path / "out"
    code, _, err = cli(*run_args(run_dir))
    assert code == 2
    assert "stage1: the loss became NaN at step 5" in err and "checkpoint-4 is intact" in err
    assert "Traceback" not in err and err.count("sftkey-lora: error:") == 1
    assert [path.name for path in RunLayout(run_dir).checkpoints()] == ["checkpoint-2", "checkpoint-4"]
    assert all(is_whole(path) for path in RunLayout(run_dir).checkpoints())
    assert stage1_status(run_dir) == "running"  # never marked complete
    assert not (run_dir / "stage1").exists()

    monkeypatch.setattr(LabelledLogitsLoss, "__call__", real)
    code, _, err = cli(*run_args(run_dir))
    assert code == 0, err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"]["stage1"]["resumed_from"] == "checkpoint-4"
    assert record["steps"]["stage2"]["status"] == "complete"


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_one_before(cli, tmp_path, monkeypatch) -> None:
    import peft.peft_model
    from safetensors import SafetensorError

    real = peft.peft_model.safe_save_file
    saves = []

    def disk_fills_on_the_second_save(tensors, filename, *args, **kwargs):
        saves.append(filename)
        if len(saves) == 2:
            Path(filename).write_bytes(b"\0" * 100)  # what a cut-short write leaves
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_fills_on_the_second_save)
    run_dir = tmp_path / "out"
    code, _, err = cli(*run_args(run_dir))
    assert code == 2
    assert f"stage1: the disk holding {run_dir} is full" in err and "checkpoint-2" in err
    assert "Traceback" not in err and err.count("sftkey-lora: error:") == 1
    # checkpoint-4 was cut short and removed
    assert [path.name for path in RunLayout(run_dir).checkpoints()] == ["checkpoint-2"]
    assert is_whole(run_dir / "checkpoint-2")
    assert stage1_status(run_dir) == "running"

    monkeypatch.setattr(peft.peft_model, "safe_save_file", real)
    code, _, err = cli(*run_args(run_dir))
    assert code == 0, err
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"]["stage1"]["resumed_from"] == "checkpoint-2"


@pytest.mark.slow
def test_a_full_disk_while_saving_an_artifact_leaves_nothing_half_written(cli, tmp_path, monkeypatch) -> None:
    """The stage's own adapter is written under a temporary name: cut short, it is removed,
    and no `stage1/` appears."""
    import peft.peft_model

    real = peft.peft_model.safe_save_file

    def full_for_the_final_adapter(tensors, filename, *args, **kwargs):
        if ".stage1.tmp" in str(filename):
            raise OSError(28, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_for_the_final_adapter)
    run_dir = tmp_path / "out"
    code, _, err = cli(*run_args(run_dir))
    assert code == 2 and "is full" in err
    assert not (run_dir / "stage1").exists() and not list(run_dir.glob(".*.tmp"))
    # training itself finished
    assert [path.name for path in RunLayout(run_dir).checkpoints()][-1] == "checkpoint-8"


def test_a_failed_write_counts_as_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch) -> None:
    """torch's writer reports ENOSPC only as a short write: free space decides."""
    import shutil
    from collections import namedtuple

    from sftkey_lora.errors import UserError
    from sftkey_lora.rundir.diskfull import disk_full_stops, is_disk_full

    short_write = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    usage = namedtuple("usage", "total used free")
    assert is_disk_full(OSError(28, "No space left on device"), tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 4096))
    assert is_disk_full(short_write, tmp_path)
    with pytest.raises(UserError, match=r"^stage1: the loss became NaN at step 3$"):  # its own message stays
        with disk_full_stops("stage1", tmp_path):
            raise UserError("stage1: the loss became NaN at step 3")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**9, 10**11))
    assert not is_disk_full(short_write, tmp_path)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not the disk: the error as raised
        with disk_full_stops("stage1", tmp_path):
            raise short_write
