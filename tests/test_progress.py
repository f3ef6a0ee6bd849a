"""Progress: a bar on a terminal; off one a plain line at most every 30 s and one at the end;
nothing with --quiet."""

from __future__ import annotations

import logging

import pytest

from sftkey_lora import output, progress
from sftkey_lora.output import set_verbosity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    return clock


def test_off_a_terminal_a_plain_line_now_and_then(clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sftkey_lora.progress")
    bar = progress.PlainProgress("stage1", total=100, unit="step")
    for _ in range(50):  # 50 steps of 1 s: one line, at 30 s
        clock.now += 1
        bar.update()
    bar.set_postfix(loss="0.500", key="1.250")
    for _ in range(50):
        clock.now += 1
        bar.update()
    bar.close()
    assert [record.getMessage() for record in caplog.records] == [
        "stage1: 30/100 steps (30%), 0:30 elapsed, ~1:10 left",
        "stage1: 60/100 steps (60%), 1:00 elapsed, ~0:40 left, loss 0.500, key 1.250",
        "stage1: 90/100 steps (90%), 1:30 elapsed, ~0:10 left, loss 0.500, key 1.250",
        "stage1: 100/100 steps (100%), 1:40 elapsed, loss 0.500, key 1.250",
    ]


def test_a_resumed_step_counts_its_pace_from_where_it_resumed(clock, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sftkey_lora.progress")
    bar = progress.PlainProgress("encoding", total=7200, unit="row", initial=3600)
    clock.now += 3600
    bar.update(1800)
    assert caplog.records[-1].getMessage() == "encoding: 5400/7200 rows (75%), 1:00:00 elapsed, ~1:00:00 left"
    short = progress.PlainProgress("stage2", total=10, unit="step")
    clock.now += 29
    short.update(10)
    short.close()  # under 30 s: nothing to say
    assert len(caplog.records) == 1


@pytest.mark.parametrize(("terminal", "verbosity", "kind"), [
    (True, "normal", "bar"), (False, "normal", "plain"), (False, "verbose", "plain"),
    (True, "quiet", "silent"), (False, "quiet", "silent"),
])
def test_the_kind_of_progress_follows_the_terminal_and_the_verbosity(monkeypatch, terminal, verbosity,
                                                                      kind) -> None:
    monkeypatch.setattr(output, "on_terminal", lambda: terminal)
    monkeypatch.setattr(progress, "on_terminal", lambda: terminal)
    set_verbosity(verbosity)
    try:
        bar = progress.progress("stage1", 10, "step")
        found = ("plain" if isinstance(bar, progress.PlainProgress) else "silent" if bar.disable else "bar")
        bar.close()
        assert found == kind
    finally:
        set_verbosity("normal")
