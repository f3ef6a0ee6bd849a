"""What the console shows at each verbosity, what the run log keeps, and a real run's output
holding no library message a user cannot act on."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.output import RESULT, UNACTIONABLE, logged_to, set_verbosity
from tests.support import QUICKSTART, ROOT, SMALL, SMALL_EVAL, as_set_flags

OURS = logging.getLogger("sftkey_lora.pipeline")
LIBRARY = logging.getLogger("transformers.modeling_utils")
NOISE = UNACTIONABLE[1]  # (library, text, why): transformers' note on the resized embedding


@pytest.fixture(autouse=True)
def normal_afterwards():
    yield
    set_verbosity("normal")


def say_everything() -> None:
    OURS.debug("each step")
    OURS.info("doing")
    OURS.log(RESULT, "the result")
    OURS.warning("look")
    LIBRARY.info("library detail")
    LIBRARY.warning("library advice")
    LIBRARY.warning(f"The {NOISE[1]} distribution")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", FutureWarning, stacklevel=1)


@pytest.mark.parametrize(("verbosity", "shown"), [
    ("quiet", ["the result", "warning: look", "[transformers] library advice",
               "[warning] FutureWarning: deprecated thing"]),
    ("normal", ["doing", "the result", "warning: look", "[transformers] library advice",
                "[warning] FutureWarning: deprecated thing"]),
    ("verbose", ["each step", "doing", "the result", "warning: look", "[transformers] library detail",
                 "[transformers] library advice", f"[transformers] The {NOISE[1]} distribution",
                 "[warning] FutureWarning: deprecated thing"]),
])
def test_the_console_shows_what_the_verbosity_asks(verbosity, shown, capsys) -> None:
    import transformers  # noqa: F401  (its own console handler must give way to ours)

    set_verbosity(verbosity)
    say_everything()
    lines = capsys.readouterr().err.splitlines()
    # A Python warning names the file and line it came from.
    assert [re.sub(r"^\[warning\] \S+:\d+: ", "[warning] ", line) for line in lines] == shown


def test_the_log_keeps_every_message_and_what_stopped_the_command(tmp_path, capsys) -> None:
    set_verbosity("quiet")
    log = tmp_path / "run.log"
    with pytest.raises(UserError), logged_to(log):
        say_everything()
        raise UserError("data.path: no such file")
    kept = log.read_text()
    for text in ("each step", "doing", "the result", "look", "library advice", NOISE[1], "deprecated thing",
                 "ERROR sftkey_lora: stopped: data.path: no such file"):
        assert text in kept
    assert f"{NOISE[1]} distribution [not shown: {NOISE[2]}]" in kept
    assert "Traceback" not in kept and "stopped" not in capsys.readouterr().err  # the CLI prints it
    with pytest.raises(ZeroDivisionError), logged_to(log):
        print(1 / 0)
    assert "Traceback" in log.read_text()  # a bug's whole story, for its report


def test_the_log_keeps_every_message_where_no_verbosity_was_chosen(tmp_path) -> None:
    """A fresh process that runs a step without the CLI or the API (no verbosity chosen)."""
    log = tmp_path / "run.log"
    code = ("import logging, sys; from pathlib import Path; from sftkey_lora.output import logged_to\n"
            "with logged_to(Path(sys.argv[1])): logging.getLogger('sftkey_lora.pipeline').info('doing')")
    subprocess.run([sys.executable, "-c", code, str(log)], check=True, cwd=ROOT)
    assert "INFO sftkey_lora.pipeline: doing" in log.read_text()


def test_other_processes_leave_the_saying_to_the_main_one(monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANK", "1")
    set_verbosity("normal")
    OURS.log(RESULT, "the result")
    OURS.warning("look")
    assert capsys.readouterr().err.splitlines() == ["warning: look"]


def cli_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sftkey_lora", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def is_progress_bar(line: str) -> bool:
    return bool(re.search(r"\d+%\|.*\| *\d+/\d+", line)) or not line.strip()


@pytest.mark.slow
def test_a_run_prints_no_message_a_user_cannot_act_on(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A checkpoint in each stage: peft used to warn at every one.
    shortest = [*SMALL, *SMALL_EVAL, "stages.stage1.training.max_steps=2",
                "stages.stage2.training.max_steps=2", "training.save_steps=2"]
    done = cli_run("run", str(QUICKSTART), "--output", str(run_dir), *as_set_flags(shortest))
    assert done.returncode == 0, done.stderr[-3000:]
    # stderr is a pipe here, not a terminal: plain lines, no bar redrawn with carriage returns.
    assert "\r" not in done.stderr and not any(is_progress_bar(line) for line in done.stderr.splitlines())
    lines = done.stderr.splitlines()  # every step is short: no progress line either
    assert lines[0] == f"{run_dir}: sftkey_tag on builtin:tiny, steps stage1 -> merge -> stage2"
    assert lines[1] == "merging stage1 into 16-bit weights (auto base) ..."
    assert lines[2].split() == "step status time tokens/s peak memory held-out key loss".split()
    assert lines[-2].startswith("sftkey_synthetic: acc ")
    assert lines[-1].startswith("evaluated sftkey_synthetic")
    assert len(lines) == 8, lines  # the summary's three steps between
    logged = (run_dir / "run.log").read_text()
    assert "stage1 step 2: loss" in logged and "stage2 step 2: loss" in logged
    assert NOISE[1] in logged  # kept in the log, not shown

    quiet = cli_run("eval", str(run_dir), "--limit", "2", "--quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    printed = quiet.stderr.splitlines()  # no bar, no progress message: the results alone
    assert len(printed) == 2, printed
    assert printed[0].startswith("sftkey_synthetic: acc ") and "(n=2)" in printed[0]
    assert printed[1].startswith("evaluated sftkey_synthetic in ")
