"""The crash harness's relay (one run killed in every phase in turn, each kill in the rerun
of the one before) and two of the torn-file catalogue's cases (one refused, one rebuilt),
against the slow tests' shared run (`python -m tests.crash_harness` and
`python -m tests.torn_files` run them all)."""

from __future__ import annotations

import pytest

from tests.crash_harness import RELAY, Harness, result, run_subject
from tests.torn_files import KINDS, Catalogue

pytestmark = [pytest.mark.slow, pytest.mark.takes(180)]


@pytest.fixture(scope="module")
def finished(small_run):
    """The shared run, made with the harness's recipe: what every rerun must end with."""
    _, record = small_run
    return record.run_dir, result(run_subject(), record.run_dir)


def test_killed_in_every_phase_in_turn_it_reruns_to_the_identical_result(finished, tmp_path) -> None:
    _, expected = finished
    runner = Harness(tmp_path)
    trial = runner.trial(run_subject(), expected, "each phase in turn", list(RELAY))
    assert [trial.phase, *trial.second.split("; ")] == list(RELAY.values())
    assert trial.outcome == "identical"  # every adapter weight bit for bit, on a CPU
    said = (tmp_path / f"run-{runner.count}.stderr").read_text()
    assert "stage1: resuming from checkpoint-4" in said and "stage2: resuming from checkpoint-2" in said


@pytest.fixture(scope="module")
def catalogue(finished, tmp_path_factory):
    prepared = Catalogue(tmp_path_factory.mktemp("torn"))
    prepared.prepare(set(), finished=finished[0])
    return prepared


@pytest.mark.parametrize(("kind", "damage"), [("run.json", "garbled"),
                                              ("stage 2: adapter_config.json", "cut")])
def test_torn_files_are_rebuilt_or_refused(catalogue, kind, damage) -> None:
    row = catalogue.case(next(found for found in KINDS if found.name == kind), damage)
    assert row.holds, row.outcome
