"""Fuzzing the two things users hand us, recipe overrides and data rows: whatever they hold,
the answer is a result or exit 2 with one message, never a traceback, never a run marked
complete."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftkey_lora.cli import main
from tests.support import QUICKSTART

FIELDS = ["strategy", "model.quantization", "model.backend", "data.source", "data.limit", "data.holdout",
          "data.segmentation", "data.path", "format.template", "format.tags", "format.max_length",
          "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "training.mode", "training.epochs",
          "training.learning_rate", "training.batch_size", "training.warmup", "training.precision",
          "stages.stage2.training.max_steps", "stages.stage3.lora.r", "merge.base", "eval.tasks",
          "eval.alpha", "eval.judge.url", "eval.judge.timeout", "nosuch", "lora.r.deeper", "include"]
VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "1e9", "nan", "[]", "{}", "[1, [2]]", "{a: 1}", "null", "true", "none",
                     "nf4", "full", "sft", "jsonl", "/no/such/file", "auto", "'", "[unclosed", ": :"]),
    st.text(max_size=12), st.integers().map(str), st.floats(allow_nan=True).map(str))
OVERRIDE = st.tuples(st.sampled_from(FIELDS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}")


def answered_cleanly(code: int, err: str) -> bool:
    return code == 0 or (code == 2 and err.count("sftkey-lora: error:") == 1 and "Traceback" not in err)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=4))
def test_any_overrides_give_a_plan_or_one_message(overrides: list[str], capsys) -> None:
    code = main(["run", str(QUICKSTART), "--dry-run", *[f"--set={item}" for item in overrides]])
    err = capsys.readouterr().err
    assert answered_cleanly(code, err), err


SCALARS = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
           | st.sampled_from(["<Thinking>", "</Answer>", "#### 5", "\\boxed{3}", " ", "\u0000"]))
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=5), inner,
                                                                         max_size=2),
    max_leaves=4)
ROW = st.dictionaries(st.sampled_from(["question", "thinking", "answer", "response", "id", "x"]), JSON_VALUES,
                      max_size=5)
LINE = st.one_of(ROW.map(lambda row: json.dumps(row).encode()), st.binary(max_size=30),
                 st.sampled_from([b"", b"[]", b"null", b"{", b'{"question": "\xff"}']))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, min_size=1, max_size=6), skip=st.booleans())
def test_any_data_file_gives_examples_or_one_message(lines: list[bytes], skip: bool, tmp_path_factory,
                                                    capsys) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "rows.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    args = ["--set", "data.source=jsonl", "--set", f"data.path={path}", "--set", f"data.skip_bad_rows={skip}",
            "--set", "data.holdout=1"]
    code = main(["inspect", str(QUICKSTART), "--json", "--n", "1", *args])
    err = capsys.readouterr().err
    assert answered_cleanly(code, err), err
    if code == 2:  # what cannot be inspected cannot be trained on either
        run_dir = folder / "run"
        code = main(["run", str(QUICKSTART), "--output", str(run_dir), *args])
        err = capsys.readouterr().err
        assert code == 2 and answered_cleanly(code, err), err
        record = run_dir / "run.json"
        steps = json.loads(record.read_text())["steps"] if record.exists() else {}
        assert not any(step.get("status") == "complete" for step in steps.values())
        assert not Path(run_dir / "stage1").exists()
