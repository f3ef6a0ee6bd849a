"""The run directory's lock: a second run is refused at once and changes nothing, a lock left
by a killed process never blocks, and the holder may take it again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftkey_lora.errors import SharedUserError
from sftkey_lora.rundir.layout import Claim, RunLayout
from sftkey_lora.rundir.lock import holding
from tests.support import QUICKSTART, ROOT, SMALL, as_set_flags

HOLD = """from pathlib import Path; import sys, time
from sftkey_lora.errors import UserError
from sftkey_lora.rundir.layout import Claim
from sftkey_lora.rundir.lock import holding
try:
    with holding(Claim(Path(sys.argv[1]), sys.argv[2], beside=sys.argv[3] == "beside")):
        print("held", flush=True)
        time.sleep(600)
except UserError as err:
    print(err, flush=True)
"""


def hold_in_another_process(root: Path, marker: str = "run.json", beside: bool = False
                            ) -> tuple[subprocess.Popen, str]:
    """A process that holds a directory (a run's by default) until killed, and the first line
    it printed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root), marker, "beside" if beside else "in"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return holder, holder.stdout.readline().strip()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


def test_a_second_run_into_a_held_directory_is_refused_and_changes_nothing(cli, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"recipe": {}, "steps": {}}))
    holder, said = hold_in_another_process(run_dir)
    assert said == "held"
    try:
        before = snapshot(run_dir)
        started = time.perf_counter()
        code, _, err = cli("run", str(QUICKSTART), "--output", str(run_dir), "--fresh")
        assert code == 2 and time.perf_counter() - started < 5  # at once: before any model is loaded
        since = json.loads((run_dir / "run.lock.json").read_text())["since"]
        assert err.strip() == (f"sftkey-lora: error: {run_dir}: in use by process {holder.pid} on "
                               f"{os.uname().nodename} since {since} (`-c {run_dir} run.json in`); "
                               "wait for it to end, or choose another --output")
        assert snapshot(run_dir) == before  # --fresh deleted nothing
        code, _, err = cli("eval", str(run_dir))
        assert code == 2 and "in use by process" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path) -> None:
    layout = RunLayout(tmp_path / "run")
    holder, said = hold_in_another_process(layout.root)
    assert said == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert layout.lock_file.exists() and layout.owner_file.exists()  # left behind, and harmless
    with holding(layout.claim):
        assert json.loads(layout.owner_file.read_text())["pid"] == os.getpid()
        with holding(layout.claim):  # the holder may take it again (eval inside a run)
            pass
        other, said = hold_in_another_process(layout.root)  # still held after the inner block
        assert other.wait() == 0 and said.endswith("wait for it to end, or choose another --output")
        assert f"in use by process {os.getpid()}" in said


def test_a_directory_left_by_a_command_killed_before_its_marker_is_taken(tmp_path) -> None:
    """A kill while the lock's note or the first `run.json` was being written leaves the lock
    and a temporary (`python -m tests.crash_harness`, `before run.json#1`): not a foreign folder."""
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    layout.lock_file.touch()
    (layout.root / ".run.json.tmp").write_text("{")
    with holding(layout.claim):
        assert layout.owner_file.is_file()
    (layout.root / "notes.txt").write_text("mine")
    with pytest.raises(SharedUserError, match="is not empty and holds no run.json"):
        with holding(layout.claim):
            pass


def test_fresh_keeps_the_lock_and_a_foreign_directory_gets_none(cli, tmp_path) -> None:
    from sftkey_lora.recipe import load_recipe
    from sftkey_lora.rundir.record import RunRecord

    layout = RunLayout(tmp_path / "run")
    recipe = load_recipe(QUICKSTART, SMALL)
    with holding(layout.claim):
        RunRecord.open(layout, recipe, fresh=False)
        (layout.root / "stage1").mkdir()
        RunRecord.open(layout, recipe, fresh=True)
        kept = sorted(path.name for path in layout.root.iterdir())
        assert kept == ["run.json", "run.lock", "run.lock.json"]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    code, _, err = cli("run", str(QUICKSTART), "--output", str(foreign), *as_set_flags(SMALL))
    assert code == 2 and "is not empty and holds no run.json" in err
    assert [path.name for path in foreign.iterdir()] == ["todo.txt"]


@pytest.mark.slow
def test_two_runs_started_together_leave_one_whole_run(cli, tmp_path) -> None:
    """Two `run`s into one directory: the second exits 2 at once, the first finishes whole."""
    run_dir = tmp_path / "run"
    shortest = [*SMALL, "stages.stage1.training.max_steps=2", "stages.stage2.training.max_steps=2",
                "training.save_steps=100"]
    command = [sys.executable, "-m", "sftkey_lora", "run", str(QUICKSTART), "--output", str(run_dir),
               *as_set_flags(shortest)]
    first = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    while not (run_dir / "run.lock.json").exists():
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.2)
    code, _, err = cli("run", str(QUICKSTART), "--output", str(run_dir), *as_set_flags(SMALL))
    assert code == 2 and f"in use by process {first.pid}" in err and err.count("\n") == 1
    _, errors = first.communicate(timeout=900)
    assert first.returncode == 0, errors
    layout = RunLayout(run_dir)
    steps = json.loads(layout.run_file.read_text())["steps"]
    complete = [name for name, step in steps.items() if step["status"] == "complete"]
    assert complete == ["stage1", "merge", "stage2"]
    for stage in ("stage1", "stage2"):
        assert (layout.stage_dir(stage) / "adapter_model.safetensors").is_file()
    assert (layout.merged_dir / "model.safetensors").is_file()


def test_a_file_system_without_flock_is_refused_not_soft_locked(monkeypatch, tmp_path) -> None:
    """filelock would fall back to a marker file, which a killed process leaves behind."""
    import errno
    import fcntl

    from sftkey_lora.errors import UserError

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(UserError, match="cannot be locked here .*choose an --output on a local disk"):
        with holding(RunLayout(tmp_path / "run").claim):
            pass


def test_an_evaluation_directory_is_held_and_names_its_model(cli, tmp_path) -> None:
    """`eval MODEL --output DIR` never writes over a run, another model's evaluation or other
    files, nor into a directory another process holds; each is refused before anything loads."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"recipe": {}, "steps": {}}))
    before = snapshot(run_dir)
    code, _, err = cli("eval", "builtin:tiny", "--output", str(run_dir))
    assert code == 2 and f"--output {run_dir}: a run directory" in err
    assert f"sftkey-lora eval {run_dir}" in err
    assert snapshot(run_dir) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "evaluation.json").write_text(json.dumps({"name_or_path": "org/another", "revision": None}))
    code, _, err = cli("eval", "builtin:tiny", "--output", str(other))
    assert code == 2 and "holds the evaluation of 'org/another', not of 'builtin:tiny'" in err
    assert sorted(path.name for path in other.iterdir()) == ["evaluation.json", "run.lock", "run.lock.json"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "metrics.json").write_text("{}")
    code, _, err = cli("eval", "builtin:tiny", "--output", str(notes))
    assert code == 2 and "is not empty and holds no evaluation.json" in err
    held = tmp_path / "held"
    holder, said = hold_in_another_process(held, "evaluation.json")
    try:
        code, _, err = cli("eval", "builtin:tiny", "--output", str(held))
        assert said == "held" and code == 2 and f"in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_comparison_and_an_export_hold_their_directories(cli, tmp_path) -> None:
    held = tmp_path / "compare"
    holder, said = hold_in_another_process(held, "compare.log")
    try:
        code, _, err = cli("compare", str(QUICKSTART), "--output", str(held))
        assert said == "held" and code == 2 and f"in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    (held / "todo.txt").write_text("mine")  # the held comparison was left as it was: no compare.log
    code, _, err = cli("compare", str(QUICKSTART), "--output", str(held))
    assert code == 2 and "is not empty and holds no compare.log" in err
    # An export is replaced whole, so its lock lies beside it, where the replacement leaves it.
    export = tmp_path / "final"
    holder, said = hold_in_another_process(export, "sftkey_recipe.json", beside=True)
    try:
        assert said == "held" and (tmp_path / ".final.run.lock").exists() and not export.exists()
        with pytest.raises(SharedUserError, match=f"{export}: in use by process {holder.pid}"):
            with holding(Claim(export, "sftkey_recipe.json", beside=True)):
                pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_under_torchrun_a_refusal_is_printed_once(tmp_path) -> None:
    """The main process decides and tells the others, which exit 2 without a word once it has
    printed (torchrun stops the rest when the first one exits). torchrun then reports the exit
    codes its own way (ChildFailedError, exit 1), which no process can change."""
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "sftkey_lora", "run", str(QUICKSTART), "--output", str(foreign)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    said = [line for line in done.stderr.splitlines() if line.startswith("sftkey-lora: error:")]
    assert said == [f"sftkey-lora: error: --output {foreign}: the directory is not empty and holds no "
                    "run.json; choose an empty or new directory"], done.stderr[-2000:]
    # The first process to leave exits 2; torchrun may stop the other before it does.
    assert "Root Cause (first observed failure)" in done.stderr and done.returncode != 0
    assert "  exitcode  : 2 (pid" in done.stderr.split("Root Cause (first observed failure)")[1]
    assert [path.name for path in foreign.iterdir()] == ["todo.txt"]
