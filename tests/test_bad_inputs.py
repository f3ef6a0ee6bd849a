"""The catalogue of bad inputs in the README: each gives exit code 2 and one message naming
the field, file or line, never a traceback, and leaves no run marked complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sftkey_lora.train.loading import resolve_model_path
from tests.support import QUICKSTART

GOOD_ROW = {"question": "What is 2 + 2?", "thinking": "2 + 2 = 4.", "answer": "4"}


def jsonl(tmp_path: Path, *lines: bytes | dict) -> list[str]:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n"
                              for line in lines))
    return ["--set", "data.source=jsonl", "--set", f"data.path={path}"]


def tokenizer_without(tmp_path: Path, *tokens: str) -> list[str]:
    """The built-in model, its tokenizer stripped of `tokens` (pad_token, eos_token)."""
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_path("builtin:tiny"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    for token in tokens:
        config.pop(token)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return ["--set", f"model.name_or_path={folder}"]


# (input, how it is made, what the message says)
CATALOGUE = [
    ("malformed YAML", lambda t: [str(_write(t / "r.yaml", "data:\n  source: [unclosed\n"))],
     "line 3 is not valid YAML"),
    ("unknown key", lambda t: ["--set", "lora.rank=8"], "field `lora.rank`: unknown key"),
    ("wrong type", lambda t: ["--set", "data.limit=many"],
     "field `data.limit`: Input should be a valid integer"),
    ("missing model directory", lambda t: ["--set", "model.name_or_path=/no/such/model"],
     "model.name_or_path: /no/such/model does not exist"),
    ("hub id while offline", lambda t: ["--set", "model.name_or_path=org/never-downloaded"],
     "so its weights cannot be fetched. Download it where there is network"),
    ("missing data file", lambda t: ["--set", "data.source=jsonl", "--set", "data.path=/no/such.jsonl"],
     "field `data.path`: file not found: /no/such.jsonl"),
    ("malformed JSONL line", lambda t: jsonl(t, GOOD_ROW, b'{"question": "Q"\n'),
     "data.jsonl:line 2: malformed JSON"),
    ("non-UTF-8 bytes", lambda t: jsonl(t, GOOD_ROW, b'{"question": "caf\xe9"}\n'),
     "data.jsonl:line 2: not UTF-8"),
    ("rows missing a field", lambda t: jsonl(t, {"question": "Q", "thinking": "t"}),
     "no usable rows"),
    ("empty answer", lambda t: jsonl(t, {**GOOD_ROW, "answer": " "}), "no usable rows"),
    ("tag inside the thinking", lambda t: jsonl(t, {**GOOD_ROW, "thinking": "so </Thinking> here"}),
     "no usable rows"),
    ("one tag string inside another", lambda t: ["--set", "format.tag_strings.think_open=<think",
                                                 "--set", "format.tag_strings.think_close=<think>"],
     "field `format.tag_strings`: think_open: '<think' is part of think_close '<think>'"),
    ("tokenizer without eos token", lambda t: tokenizer_without(t, "eos_token", "pad_token"),
     "model.name_or_path: the tokenizer has no eos token"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("made", "says"), [row[1:] for row in CATALOGUE], ids=[row[0] for row in CATALOGUE])
def test_a_bad_input_is_one_message_and_exit_2(cli, tmp_path: Path, made, says: str) -> None:
    args = made(tmp_path)
    recipe = args.pop(0) if args and args[0].endswith(".yaml") else str(QUICKSTART)
    for command in (["inspect", recipe, "--n", "1"], ["run", recipe, "--output", str(tmp_path / "run")]):
        code, _, err = cli(*command, *args)
        assert code == 2, err
        assert says in err and "Traceback" not in err
        assert err.count("sftkey-lora: error:") == 1
    assert not (tmp_path / "run" / "stage1").exists()


def test_dropped_rows_are_counted_by_reason_with_their_lines(cli, tmp_path: Path) -> None:
    """Rows that cannot be used are the file's, not the run's, problem while some remain: they
    are dropped, counted by reason with their line numbers, and training goes on."""
    args = jsonl(tmp_path, {"question": "Q", "thinking": "t"}, {**GOOD_ROW, "answer": ""},
                 {**GOOD_ROW, "answer": "4 </Answer>"}, *[GOOD_ROW] * 5)
    code, _, err = cli("inspect", str(QUICKSTART), "--json", *args)
    assert code == 0, err
    assert "8 rows read, 5 used, 3 dropped" in err
    assert "missing_answer" in err and "line 1" in err and "empty_answer" in err and "tag_in_text" in err


def test_a_tokenizer_without_a_pad_token_pads_with_eos(cli, tmp_path: Path) -> None:
    args = tokenizer_without(tmp_path, "pad_token")
    code, out, err = cli("inspect", str(QUICKSTART), "--json", "--n", "1", *args)
    assert code == 0, err
    assert json.loads(out)[0]["loss_text"]["stage2"].endswith("<|endoftext|>")


def test_an_end_token_the_config_does_not_name_is_reported_once_before_training(cli, tmp_path: Path) -> None:
    """A tokenizer whose eos the model's config and generation config do not name (a GGUF
    conversion that names <|im_start|>): one warning naming both, and the one the run uses."""
    args = tokenizer_without(tmp_path)
    folder = tmp_path / "model"
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        config["eos_token_id"] = [7, 9] if name == "generation_config.json" else 7
        (folder / name).write_text(json.dumps(config))
    code, out, err = cli("inspect", str(QUICKSTART), "--json", "--n", "1", *args)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "end token" in line]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    named = [f"{tokenizer.convert_ids_to_tokens(i)} (id {i})" for i in (7, 9)]
    assert len(lines) == 1
    assert f"the tokenizer's end token is <|endoftext|> (id {tokenizer.eos_token_id})" in lines[0]
    assert f"the model's config names {named[0]}, {named[1]}" in lines[0]
    assert "this run ends every response with the tokenizer's <|endoftext|>" in lines[0]
    assert json.loads(out)[0]["loss_text"]["stage2"].endswith("<|endoftext|>")


def test_an_end_token_the_config_names_is_not_reported(cli) -> None:
    code, _, err = cli("inspect", str(QUICKSTART), "--json", "--n", "1")
    assert code == 0 and "end token" not in err
