"""The run record: resume, refuse, start over."""

from __future__ import annotations

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.recipe import Recipe
from sftkey_lora.rundir import (
    RUN_FILE,
    RunRecord,
    last_whole_checkpoint,
    remove_checkpoints,
    remove_partial_checkpoints,
    replace_dir,
)


def test_fresh_starts_over_and_resume_keeps_status(tmp_path) -> None:
    record = RunRecord.open(tmp_path / "run", Recipe(), fresh=False)
    record.update_step("stage1", status="complete")
    (tmp_path / "run" / "stage1").mkdir()
    assert RunRecord.open(tmp_path / "run", Recipe(), fresh=False).status("stage1") == "complete"
    again = RunRecord.open(tmp_path / "run", Recipe(), fresh=True)
    assert again.status("stage1") == "pending"
    assert not (tmp_path / "run" / "stage1").exists()


def test_a_different_recipe_names_the_differing_fields(tmp_path) -> None:
    RunRecord.open(tmp_path, Recipe(), fresh=False)
    changed = Recipe.model_validate({"training": {"learning_rate": 0.5}, "data": {"holdout": 4}})
    with pytest.raises(UserError, match=r"differs in data\.holdout, training\.learning_rate.*--fresh"):
        RunRecord.open(tmp_path, changed, fresh=False)


def test_evaluation_settings_may_change_between_runs(tmp_path) -> None:
    record = RunRecord.open(tmp_path, Recipe(), fresh=False)
    record.update_step("stage1", status="complete")
    changed = Recipe.model_validate({"eval": {"limit": 5, "alpha": 0.5}})
    again = RunRecord.open(tmp_path, changed, fresh=False)
    assert again.status("stage1") == "complete"
    assert again.data["recipe"]["eval"]["alpha"] == 0.5  # recorded for the next evaluation


def test_an_unreadable_record_is_a_user_error(tmp_path) -> None:
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        RunRecord.open(tmp_path, Recipe(), fresh=False)


def test_only_trainer_checkpoints_are_removed(tmp_path) -> None:
    for step in (10, 9, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-final").mkdir()
    remove_checkpoints(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-final"]


def checkpoint(run_dir, step: int, state: str | None) -> None:
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
    assert last_whole_checkpoint(tmp_path).name == "checkpoint-8"
    assert remove_partial_checkpoints(tmp_path) == ["checkpoint-12", "checkpoint-16"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert remove_partial_checkpoints(tmp_path) == []


def test_a_replaced_directory_is_never_missing(tmp_path) -> None:
    final, tmp = tmp_path / "stage1", tmp_path / ".stage1.tmp"
    final.mkdir()
    (final / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    replace_dir(tmp, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1"]
