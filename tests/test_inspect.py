import json
import re
import subprocess
import sys
from pathlib import Path

from tests.support import FIXTURES, QUICKSTART, ROOT

UNSEEN_ROWS = [
    {"question": "  Über-Preis für 🍎? ", "thinking": "Schritt 1: 3 × 🍎 = 6 €\nSchritt 2:\tprüfen…\n",
     "answer": "  6 €  "},
    {"question": "How much is the car?", "thinking": "It costs five thousand.\n\nIn dollars:",
     "answer": "$5,000"},
    {"question": "Pick one", "thinking": "  leading and trailing spaces  ", "answer": " (B) "},
    {"question": "数学", "thinking": "二加二等于四。", "answer": "四"},
]


def inspect_json(cli, *overrides: str) -> list[dict]:
    args = ["inspect", str(QUICKSTART), "--json", "--n", "50"]
    for item in overrides:
        args += ["--set", item]
    code, out, err = cli(*args)
    assert code == 0, err
    return json.loads(out)


def test_jsonl_rows_loss_texts(cli, tmp_path: Path, tiny_tokenizer) -> None:
    path = tmp_path / "unseen.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in UNSEEN_ROWS) + "\n")
    result = inspect_json(cli, "data.source=jsonl", f"data.path={path}")
    assert len(result) == len(UNSEEN_ROWS)
    eos = tiny_tokenizer.eos_token
    for row, item in zip(UNSEEN_ROWS, result, strict=True):
        answer, thinking = row["answer"].strip(), row["thinking"].strip()
        assert (item["answer"], item["thinking"]) == (answer, thinking)
        stage2, stage1 = item["loss_text"]["stage2"], item["loss_text"]["stage1"]
        assert stage2 in (f"<Answer>{answer}</Answer>{eos}", f"><Answer>{answer}</Answer>{eos}")
        assert thinking not in stage2
        assert stage1 == f"<Thinking>{thinking}</Thinking><Answer>{answer}</Answer>{eos}"
        assert row["question"].strip() not in stage1 and "Assistant" not in stage1


def test_gsm8k_rows_give_the_number_after_the_marker(cli) -> None:
    result = inspect_json(cli, "data.source=gsm8k", f"data.path={FIXTURES / 'gsm8k.jsonl'}")
    assert [r["answer"] for r in result] == ["72", "10"]
    assert all("####" not in r["thinking"] for r in result)
    assert result[0]["loss_text"]["stage2"].endswith("<Answer>72</Answer><|endoftext|>")


def test_single_stage_strategies_name_their_stage(cli) -> None:
    sft = inspect_json(cli, "strategy=sft", "data.synthetic.n_train=5")[0]
    key_tag = inspect_json(cli, "strategy=key_tag", "data.synthetic.n_train=5")[0]
    assert set(sft["loss_text"]) == {"stage1"} == set(key_tag["loss_text"])
    assert "<Thinking>" not in sft["loss_text"]["stage1"]
    assert sft["loss_text"]["stage1"].endswith(f"The answer is {sft['answer']}<|endoftext|>")
    assert key_tag["loss_text"]["stage1"].endswith(f"<Answer>{key_tag['answer']}</Answer><|endoftext|>")


def test_human_view_reports_data_and_ratio(cli) -> None:
    code, out, _ = cli("inspect", str(QUICKSTART), "--n", "1")
    assert code == 0
    assert "«thinking»" in out and "«answer»" in out and "^" in out
    assert "stage2 (key," in out and "stage1 (full," in out
    assert "data: synthetic (train): 2000 rows read, 2000 used, 0 dropped" in out
    ratio = float(re.search(r"median thinking/answer token ratio: ([\d.]+)", out).group(1))
    assert ratio >= 10
    assert "stage2 trains on the key tokens (marked ^)" in out
    code, out, _ = cli("inspect", str(QUICKSTART), "--n", "1", "--set", "strategy=sft")
    assert "stage1 trains on every token after the prompt" in out and "^" not in out


def test_data_report_lists_dropped_rows(cli) -> None:
    code, out, err = cli("inspect", str(QUICKSTART), "--json", "--set", "data.source=gsm8k",
                         "--set", f"data.path={FIXTURES / 'gsm8k.jsonl'}")
    assert code == 0
    assert "3 rows read, 2 used, 1 dropped" in err and "dropped 1 × no_answer_marker" in err


def test_missing_model_exits_2_naming_the_field(cli, tmp_path: Path) -> None:
    code, _, err = cli("inspect", str(QUICKSTART), "--set", "model.name_or_path=acme/not-a-model")
    assert code == 2
    assert "model.name_or_path: cannot load 'acme/not-a-model'" in err
    assert "cannot be fetched" in err and "Traceback" not in err
    code, _, err = cli("inspect", str(QUICKSTART), "--set", f"model.name_or_path={tmp_path}")
    assert code == 2 and f"{tmp_path} is not a model directory" in err
    code, _, err = cli("inspect", str(QUICKSTART), "--set", "model.name_or_path=builtin:huge")
    assert code == 2 and "no built-in model 'huge'" in err


def test_console_script_and_module_entry_point() -> None:
    for command in ([str(Path(sys.executable).parent / "sftkey-lora")],
                    [sys.executable, "-m", "sftkey_lora"]):
        done = subprocess.run([*command, "inspect", str(QUICKSTART), "--set", "strategy=nope"],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 2
        assert done.stderr.startswith("sftkey-lora: error:") and "`strategy`" in done.stderr
        assert "Traceback" not in done.stderr
