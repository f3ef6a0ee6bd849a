"""The named crash points: a process asked to die at one dies there, before or after the rename
as named, and one asked to log them lists every passage in order."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from sftkey_lora.rundir.crashpoints import CRASH_AT, CRASH_LOG

WRITES = """
import sys
from pathlib import Path
from sftkey_lora.rundir.files import write_json_atomic
folder = Path(sys.argv[1])
for step in range(3):
    write_json_atomic(folder / "run.json", {"step": step})
"""


def writes(folder: Path, **env: str) -> int:
    import os

    return subprocess.run([sys.executable, "-c", WRITES, str(folder)], env={**os.environ, **env},
                          check=False).returncode


def test_the_log_lists_every_passage_in_order(tmp_path) -> None:
    log = tmp_path / "points.log"
    assert writes(tmp_path, **{CRASH_LOG: str(log)}) == 0
    assert log.read_text().split("\n")[:-1] == [f"{when} run.json#{n}" for n in (1, 2, 3)
                                                 for when in ("before", "after")]


def test_a_kill_before_the_rename_leaves_the_file_before(tmp_path) -> None:
    assert writes(tmp_path, **{CRASH_AT: "before run.json#2"}) == -signal.SIGKILL
    assert (tmp_path / "run.json").read_text() == '{\n "step": 0\n}\n'
    assert (tmp_path / ".run.json.tmp").read_text() == '{\n "step": 1\n}\n'  # written, never renamed


def test_a_kill_after_the_rename_leaves_the_new_file(tmp_path) -> None:
    assert writes(tmp_path, **{CRASH_AT: "after run.json#2"}) == -signal.SIGKILL
    assert (tmp_path / "run.json").read_text() == '{\n "step": 1\n}\n'
    assert not (tmp_path / ".run.json.tmp").exists()


def test_a_name_alone_is_its_first_passage(tmp_path) -> None:
    assert writes(tmp_path, **{CRASH_AT: "after run.json"}) == -signal.SIGKILL
    assert (tmp_path / "run.json").read_text() == '{\n "step": 0\n}\n'


def test_a_point_never_passed_kills_nothing(tmp_path) -> None:
    assert writes(tmp_path, **{CRASH_AT: "before another.json"}) == 0
    assert (tmp_path / "run.json").read_text() == '{\n "step": 2\n}\n'
