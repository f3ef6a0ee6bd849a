"""Writes a kill cannot leave half done, and checkpoints cut short found and removed."""

from __future__ import annotations

from pathlib import Path

from sftkey_lora.rundir.files import (
    last_whole_checkpoint,
    remove_checkpoints,
    remove_partial_checkpoints,
    remove_temporaries,
    replace_dir,
    write_text_atomic,
)
from sftkey_lora.rundir.layout import RunLayout
from sftkey_lora.rundir.manifest import write_manifest


def test_only_trainer_checkpoints_are_removed(tmp_path) -> None:
    for step in (10, 9, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-final").mkdir()
    assert [path.name for path in RunLayout(tmp_path).checkpoints()] == [
        "checkpoint-9", "checkpoint-10", "checkpoint-100"]  # by step, not by name
    remove_checkpoints(RunLayout(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-final"]


def checkpoint(run_dir: Path, step: int, state: str | None) -> None:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    if state is not None:
        (folder / "trainer_state.json").write_text(state)


def test_checkpoints_cut_short_while_saving_are_removed(tmp_path) -> None:
    checkpoint(tmp_path, 4, '{"global_step": 4}')
    checkpoint(tmp_path, 8, '{"global_step": 8}')
    checkpoint(tmp_path, 12, None)  # killed before the trainer state was written
    checkpoint(tmp_path, 16, '{"global_st')  # killed while writing it
    layout = RunLayout(tmp_path)
    assert last_whole_checkpoint(layout).name == "checkpoint-8"
    assert remove_partial_checkpoints(layout) == ["checkpoint-12", "checkpoint-16"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert remove_partial_checkpoints(layout) == []


def test_a_checkpoint_damaged_since_it_was_saved_is_removed(tmp_path) -> None:
    for step in (2, 4):
        checkpoint(tmp_path, step, f'{{"global_step": {step}}}')
        (tmp_path / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"moments" * 100)
        write_manifest(tmp_path / f"checkpoint-{step}")
    with (tmp_path / "checkpoint-4" / "optimizer.pt").open("r+b") as handle:
        handle.truncate(350)
    layout = RunLayout(tmp_path)
    assert last_whole_checkpoint(layout).name == "checkpoint-2"
    assert remove_partial_checkpoints(layout) == ["checkpoint-4"]


def test_a_replaced_directory_is_never_missing(tmp_path) -> None:
    final, tmp = tmp_path / "stage1", tmp_path / ".stage1.tmp"
    final.mkdir()
    (final / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    replace_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1"]


def test_atomic_text_and_temporaries(tmp_path) -> None:
    write_text_atomic(tmp_path / "report.md", "# done\n")
    (tmp_path / ".stage2.tmp").mkdir()
    (tmp_path / ".run.json.tmp").write_text("{")
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
    assert (tmp_path / "report.md").read_text() == "# done\n"
