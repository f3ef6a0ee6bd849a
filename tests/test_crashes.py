"""A handful of the crash harness's kills, one in every phase of a run, and of the torn-file
catalogue's cases, on one shared uninterrupted run (`python -m tests.crash_harness` and
`python -m tests.torn_files` run them all)."""

from __future__ import annotations

import pytest

from tests.crash_harness import Harness, run_subject
from tests.torn_files import KINDS, Catalogue

pytestmark = pytest.mark.slow

# One named point in every phase: stage 1, the merge, stage 2, the evaluation, the report.
PHASES = {"after checkpoint#2": "run: stage1 running", "before stage1-merged#1": "run: merge running",
          "after checkpoint#4": "run: stage2 running", "before samples#1": "run: eval running",
          "after report.md#1": "run: eval running"}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    harness = Harness(tmp_path_factory.mktemp("crashes"))
    expected, wall, points = harness.reference(run_subject())
    return harness, expected, wall, points


def test_the_reference_passes_every_chosen_point(harness) -> None:
    _, _, _, points = harness
    assert set(PHASES) <= set(points)
    assert sum(point.startswith("before run.json#") for point in points) >= 8  # every update


@pytest.mark.parametrize("point", list(PHASES))
def test_a_kill_at_a_named_point_reruns_to_the_identical_result(harness, point) -> None:
    runner, expected, _, _ = harness
    trial = runner.trial(run_subject(), expected, point, crash_at=point)
    assert (trial.phase, trial.outcome) == (PHASES[point], "identical")


def test_a_kill_mid_run_and_another_in_its_rerun_end_identical(harness) -> None:
    runner, expected, wall, _ = harness
    trial = runner.trial(run_subject(), expected, "half", kill_after=wall / 2, second_after=wall / 4)
    assert trial.second and trial.outcome == "identical"


@pytest.fixture(scope="module")
def catalogue(harness):
    runner, _, _, _ = harness
    prepared = Catalogue(runner.work / "torn")
    prepared.prepare({"killed"}, finished=runner.work / "run-reference")
    return prepared


@pytest.mark.parametrize(("kind", "damage"), [("samples", "zeroed"), ("run.json", "garbled"),
                                              ("checkpoint: optimizer state", "cut")])
def test_torn_files_are_rebuilt_or_refused(catalogue, kind, damage) -> None:
    row = catalogue.case(next(found for found in KINDS if found.name == kind), damage)
    assert row.holds, row.outcome
