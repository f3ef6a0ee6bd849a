"""The crash harness's relay (one run killed in every phase in turn, each kill in the rerun
of the one before) and a few of the torn-file catalogue's cases, on one shared uninterrupted
run (`python -m tests.crash_harness` and `python -m tests.torn_files` run them all)."""

from __future__ import annotations

import pytest

from tests.crash_harness import RELAY, Harness, run_subject
from tests.torn_files import KINDS, Catalogue

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("crashes"))
    expected, _, points = harness.reference(run_subject())
    return harness, expected, points


def test_the_reference_passes_every_chosen_point(harness) -> None:
    _, _, points = harness
    chosen = {"after checkpoint#5", "before stage1-merged#1", "before samples#1", "after report.md#1"}
    assert chosen <= set(points)  # three checkpoints in stage 1, two in stage 2
    assert sum(point.startswith("before run.json#") for point in points) >= 8  # every update


def test_killed_in_every_phase_in_turn_it_reruns_to_the_identical_result(harness) -> None:
    runner, expected, _ = harness
    trial = runner.trial(run_subject(), expected, "each phase in turn", list(RELAY))
    assert [trial.phase, *trial.second.split("; ")] == list(RELAY.values())
    assert trial.outcome == "identical"
    said = (runner.work / f"run-{runner.count}.stderr").read_text()
    assert "stage1: resuming from checkpoint-4" in said and "stage2: resuming from checkpoint-2" in said


@pytest.fixture(scope="module")
def catalogue(harness):
    runner, _, _ = harness
    prepared = Catalogue(runner.work / "torn")
    prepared.prepare({"killed"}, finished=runner.work / "run-reference")
    return prepared


@pytest.mark.parametrize(("kind", "damage"), [("samples", "zeroed"), ("run.json", "garbled"),
                                              ("checkpoint: optimizer state", "cut")])
def test_torn_files_are_rebuilt_or_refused(catalogue, kind, damage) -> None:
    row = catalogue.case(next(found for found in KINDS if found.name == kind), damage)
    assert row.holds, row.outcome
