"""The command line: each command reaches its handler with its arguments; a user error is
exit 2 and one line; only the CLI sets exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftkey_lora import cli
from sftkey_lora.errors import UserError
from tests.support import QUICKSTART

COMMAND_LINES = {
    "inspect": (["inspect", "r.yaml", "--n", "2", "--json"],
                {"recipe": Path("r.yaml"), "n": 2, "json": True}),
    "run": (["run", "r.yaml", "--output", "o", "--set", "a.b=1", "--fresh"],
            {"output": Path("o"), "overrides": ["a.b=1"], "fresh": True, "dry_run": False}),
    "eval": (["eval", "RUN", "--tasks", "t1, t2", "--limit", "3"], {"target": "RUN", "tasks": ["t1", "t2"],
                                                                      "limit": 3}),
    "compare": (["compare", "r.yaml", "--output", "c", "--seeds", "0, 2"],
                {"output": Path("c"), "fresh": False, "seeds": [0, 2]}),
    "significance": (["significance", "A", "B", "--json"], {"a": Path("A"), "b": Path("B"), "json": True}),
    "export": (["export", "RUN", "--output", "E"], {"run_dir": Path("RUN"), "output": Path("E")}),
    "bench": (["bench", "--json", "--seq-len", "64"], {"json": True, "seq_len": 64}),
    "tasks-dir": (["tasks-dir"], {}),
    "build-tiny": (["build-tiny", "--steps", "5"], {"steps": 5, "seed": None}),
}


def test_every_command_has_a_handler() -> None:
    parser_commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(parser_commands) == set(cli.COMMANDS) == set(COMMAND_LINES)


@pytest.mark.parametrize("command", sorted(COMMAND_LINES))
def test_each_command_reaches_its_handler_with_its_arguments(command: str, monkeypatch) -> None:
    argv, expected = COMMAND_LINES[command]
    received = []
    monkeypatch.setitem(cli.COMMANDS, command, received.append)
    assert cli.main(argv) == 0
    assert len(received) == 1 and received[0].command == command
    assert {key: getattr(received[0], key) for key in expected} == expected


@pytest.mark.parametrize(("raised", "code"), [(UserError("field `x`: bad"), 2), (KeyboardInterrupt(), 130)])
def test_errors_become_exit_codes(raised: BaseException, code: int, monkeypatch, capsys) -> None:
    def fails(args) -> None:
        raise raised

    monkeypatch.setitem(cli.COMMANDS, "tasks-dir", fails)
    assert cli.main(["tasks-dir"]) == code
    err = capsys.readouterr().err
    assert err == ("sftkey-lora: error: field `x`: bad\n" if code == 2 else "")


def test_a_bug_is_not_dressed_as_a_user_error(monkeypatch) -> None:
    """Anything but a UserError keeps its traceback: it is ours to fix, not the user's."""
    def breaks(args) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "tasks-dir", breaks)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["tasks-dir"])


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run"])  # no recipe
    assert exit_.value.code == 2
    assert "the following arguments are required: recipe" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["inspect", str(QUICKSTART), "--n", "0"], "--n: must be at least 1"),
    (["eval", "builtin:tiny", "--limit", "0"], "--limit: must be at least 1"),
    (["eval", "builtin:tiny", "--recipe", str(QUICKSTART), "--set", "eval.tasks=[]"],
     "eval.tasks: no task to evaluate on"),
])
def test_bad_options_name_themselves(argv: list[str], says: str, capsys) -> None:
    assert cli.main(argv) == 2
    assert says in capsys.readouterr().err


def test_tasks_dir_prints_the_folder_of_the_task_files(capsys) -> None:
    assert cli.main(["tasks-dir"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "_sftkey_template_yaml").is_file() and (folder / "sftkey_gsm8k.yaml").is_file()
