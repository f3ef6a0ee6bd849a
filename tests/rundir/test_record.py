"""The run record: resume, refuse, start over; typed outcomes read back as written."""

from __future__ import annotations

import json

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.recipe import Recipe
from sftkey_lora.rundir.layout import RunLayout
from sftkey_lora.rundir.outcomes import MergeOutcome, StageOutcome, summary_table
from sftkey_lora.rundir.record import RunRecord
from tests.support import MERGED, stage_outcome


def test_fresh_starts_over_and_resume_keeps_status(tmp_path) -> None:
    layout = RunLayout(tmp_path / "run")
    record = RunRecord.open(layout, Recipe(), fresh=False)
    record.complete("stage1", stage_outcome())
    layout.stage_dir("stage1").mkdir()
    assert RunRecord.open(layout, Recipe(), fresh=False).status("stage1") == "complete"
    again = RunRecord.open(layout, Recipe(), fresh=True)
    assert again.status("stage1") == "pending"
    assert not layout.stage_dir("stage1").exists()


def test_outcomes_read_back_typed_and_running_steps_have_none(tmp_path) -> None:
    layout = RunLayout(tmp_path)
    record = RunRecord.open(layout, Recipe(), fresh=False)
    record.start("stage1")
    assert record.status("stage1") == "running" and record.outcome("stage1", StageOutcome) is None
    record.complete("stage1", stage_outcome(0.25))
    record.complete("merge", MERGED)
    again = RunRecord.open(layout, Recipe(), fresh=False)
    assert again.outcome("stage1", StageOutcome) == stage_outcome(0.25)
    assert again.outcome("merge", MergeOutcome) == MERGED
    on_disk = json.loads(layout.run_file.read_text())["steps"]["stage1"]
    assert on_disk["status"] == "complete" and on_disk["started"]  # the start time is kept
    assert on_disk["heldout_key_loss"] == {"before": 9.0, "after": 0.25}  # run.json's format


def test_summary_table_has_a_row_per_training_step() -> None:
    steps = {"stage1": {"status": "complete", **stage_outcome(0.25).model_dump()},
             "merge": {"status": "complete", **MERGED.model_dump()},
             "stage2": {"status": "running"}, "eval": {"status": "complete"}}
    lines = summary_table(steps).splitlines()
    assert lines[0].split() == ["step", "status", "time", "tokens/s", "peak", "memory", "held-out", "key",
                                "loss"]
    assert lines[1].split() == ["stage1", "complete", "12", "s", "300", "900", "MB", "9.000", "->", "0.250"]
    assert "KL original 0.0011, nf4 0.00032 -> nf4" in lines[2]
    assert lines[3].split() == ["stage2", "running"]
    assert len(lines) == 4  # the evaluation has its own report


def test_a_different_recipe_names_the_differing_fields(tmp_path) -> None:
    RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=False)
    changed = Recipe.model_validate({"training": {"learning_rate": 0.5}, "data": {"holdout": 4}})
    with pytest.raises(UserError, match=r"differs in data\.holdout, training\.learning_rate.*--fresh"):
        RunRecord.open(RunLayout(tmp_path), changed, fresh=False)


def test_a_run_recorded_before_a_recipe_key_existed_resumes(tmp_path) -> None:
    """A key added to the recipe since (at its default) is not a different recipe."""
    record = RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=False)
    record.complete("stage1", stage_outcome())
    data = json.loads(RunLayout(tmp_path).run_file.read_text())
    del data["recipe"]["merge"]["requantize"], data["checksum"]  # as an earlier version wrote it
    RunLayout(tmp_path).run_file.write_text(json.dumps(data))
    assert RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=False).status("stage1") == "complete"
    with pytest.raises(UserError, match=r"differs in merge\.requantize"):
        RunRecord.open(RunLayout(tmp_path), Recipe.model_validate({"merge": {"requantize": False}}),
                       fresh=False)


def test_evaluation_settings_may_change_between_runs(tmp_path) -> None:
    record = RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=False)
    record.complete("stage1", stage_outcome())
    changed = Recipe.model_validate({"eval": {"limit": 5, "alpha": 0.5}})
    again = RunRecord.open(RunLayout(tmp_path), changed, fresh=False)
    assert again.status("stage1") == "complete"
    assert again.data["recipe"]["eval"]["alpha"] == 0.5  # recorded for the next evaluation


def test_an_unreadable_record_is_a_user_error(tmp_path) -> None:
    RunLayout(tmp_path).run_file.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=False)


def test_a_non_run_directory_is_never_written_into(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no run.json"):
        RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=True)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_a_record_changed_since_it_was_written_is_a_user_error(tmp_path) -> None:
    """A value changed inside a well-formed run.json: its checksum no longer matches."""
    record = RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=False)
    record.complete("stage1", stage_outcome())
    file = RunLayout(tmp_path).run_file
    file.write_text(file.read_text().replace('"steps": 6', '"steps": 7'))
    with pytest.raises(UserError, match="run.json: changed since it was written"):
        RunRecord.open(RunLayout(tmp_path), Recipe(), fresh=False)
