import json
import re
from pathlib import Path

import pytest

from sftkey_lora.data import load_examples
from sftkey_lora.data.synthetic import synthetic_split
from sftkey_lora.errors import UserError
from sftkey_lora.recipe import DataConfig
from tests.support import FIXTURES


def data(**fields) -> DataConfig:
    return DataConfig(**fields)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_gsm8k_local_file_in_hub_schema() -> None:
    examples, report = load_examples(data(source="gsm8k", path=FIXTURES / "gsm8k.jsonl"))
    assert [e.answer for e in examples] == ["72", "10"]
    assert "####" not in examples[0].thinking and "<<" not in examples[0].thinking
    assert examples[0].thinking == ("Natalia sold 48/2 = 24 clips in May.\n"
                                    "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert examples[0].prompt.startswith("Natalia sold clips")
    assert (report.rows_read, report.used, dict(report.dropped)) == (3, 2, {"no_answer_marker": 1})
    assert report.samples["no_answer_marker"][0].endswith("line 3: `answer` has no `####`")


def test_openbookqa_json_file_through_load_dataset() -> None:
    examples, report = load_examples(data(source="openbookqa", path=FIXTURES / "openbookqa.json"))
    first, second = examples
    assert first.answer == "D"
    assert first.prompt.endswith("C. flowers wilting in a vase\nD. plants sprouting, blooming and wilting")
    assert first.thinking == ('The sun is the source of energy for physical cycles on Earth. '
                              'The option that fits is "plants sprouting, blooming and wilting".')
    assert second.thinking == 'The option that fits is "the mountains seem smaller than in photographs".'
    assert first.id == "7-980"
    assert dict(report.dropped) == {"bad_answerKey": 1}


def test_openr1_math_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "problem": ["Compute $1/2 + 1/4$.", "Find x if 2x = 8."],
        "solution": ["We add: $1/2 + 1/4 = 3/4$, so the result is \\boxed{\\frac{3}{4}}.",
                     "Dividing by 2 gives x = 4."],
        "answer": ["\\frac{3}{4}", "4"],
        "problem_type": ["Algebra", "Algebra"], "question_type": ["math-word-problem"] * 2,
        "source": ["olympiads", "cn_contest"], "uuid": ["a1", "b2"],
        "is_reasoning_complete": [[True], [True]], "correctness_math_verify": [[True], [True]],
    }
    path = tmp_path / "openr1.parquet"
    pq.write_table(pa.table(rows), path)
    examples, report = load_examples(data(source="openr1_math", path=path))
    assert [e.answer for e in examples] == ["\\frac{3}{4}", "4"]
    assert examples[1].thinking == "Dividing by 2 gives x = 4."
    assert report.used == 2


def test_cot_collection_counts_empty_target() -> None:
    examples, report = load_examples(data(source="cot_collection", path=FIXTURES / "cot_collection.jsonl"))
    assert [(e.prompt, e.answer) for e in examples] == [
        ("Is the sky blue on a clear day? Options: yes, no", "yes"), ("What is 3 squared?", "9")]
    assert dict(report.dropped) == {"empty_answer": 1}


def test_jsonl_fields_raw_responses_and_bad_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "x1", "question": " Q1 ", "thinking": "t\nt2", "answer": " $5,000 "},
        {"question": "Q2", "response": "first\nso The answer is 12."},
        {"question": "Q3", "response": "by rule\n#### 9"},
        {"question": "Q4", "thinking": "t", "answer": 7},
        "",
        {"question": "Q5", "thinking": "t"},
        {"question": "Q6", "thinking": "a </Thinking> inside", "answer": "1"},
        {"question": "Q7", "response": "one line only"},
        {"question": "Q8", "thinking": "t", "answer": ["a", "list"]},
    ])
    examples, report = load_examples(data(source="jsonl", path=path))
    assert [(e.prompt, e.thinking, e.answer) for e in examples] == [
        ("Q1", "t\nt2", "$5,000"), ("Q2", "first\nso", "12"), ("Q3", "by rule", "9"), ("Q4", "t", "7")]
    assert examples[0].id == "x1"
    assert dict(report.dropped) == {"missing_answer": 1, "tag_in_text": 1,
                                    "unsegmented_response": 1, "bad_answer": 1}
    assert report.rows_read == 8
    assert "line 6" in report.samples["missing_answer"][0]
    shown = report.format()
    assert "dropped 1 × tag_in_text" in shown and "contains </Thinking>" in shown


@pytest.mark.parametrize(("line", "problem"), [
    (b'{"question": "Q", "thinking": "t", "answer": "1"', "malformed JSON"),
    (b'{"question": "caf\xe9", "thinking": "t", "answer": "1"}', "not UTF-8"),
    (b'[1, 2]', "expected a JSON object, got list"),
])
def test_bad_jsonl_lines_stop_with_file_and_line(tmp_path: Path, line: bytes, problem: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "Q", "thinking": "t", "answer": "1"}\n' + line + b"\n")
    with pytest.raises(UserError) as err:
        load_examples(data(source="jsonl", path=path))
    assert f"{path}:line 2: {problem}" in str(err.value)
    examples, report = load_examples(data(source="jsonl", path=path, skip_bad_rows=True))
    assert len(examples) == 1 and dict(report.dropped) == {"bad_line": 1}


def test_malformed_json_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n {"question_stem": "q",\n  "choices": oops}\n]\n')
    with pytest.raises(UserError, match=r"d.json: cannot be read as json \(line 3: Expecting value\)"):
        load_examples(data(source="openbookqa", path=path))


def test_no_usable_rows_is_an_error_with_the_report(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "thinking": "t", "answer": ""}])
    with pytest.raises(UserError, match="no usable rows") as err:
        load_examples(data(source="jsonl", path=path))
    assert "dropped 1 × empty_answer" in str(err.value)


@pytest.mark.parametrize(("source", "repo"), [
    ("gsm8k", "openai/gsm8k"), ("openbookqa", "allenai/openbookqa"),
    ("openr1_math", "open-r1/OpenR1-Math-220k"), ("cot_collection", "kaist-ai/CoT-Collection"),
])
def test_hub_sources_offline_point_to_data_path(source: str, repo: str) -> None:
    with pytest.raises(UserError) as err:
        load_examples(data(source=source))
    message = str(err.value)
    assert f"cannot load {repo}" in message and "HF_HUB_OFFLINE" in message
    assert f"Set data.path to a local JSON/JSONL/Parquet file in the {source} schema" in message


def test_jsonl_source_needs_a_file() -> None:
    with pytest.raises(UserError, match="data.path"):
        load_examples(data(source="jsonl"))


def test_synthetic_splits_are_seeded_and_disjoint() -> None:
    train = synthetic_split("train", 300, 100, seed=3)
    assert train == synthetic_split("train", 300, 100, seed=3)
    assert train != synthetic_split("train", 300, 100, seed=4)
    test = synthetic_split("test", 300, 100, seed=3)
    pretrain = synthetic_split("pretrain", 2000, 100, seed=3)
    assert len(test) == 100 and len({e.prompt for e in train}) == 300
    assert not {e.prompt for e in test} & ({e.prompt for e in train} | {e.prompt for e in pretrain})


def test_synthetic_solutions_are_correct_arithmetic() -> None:
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    for example in synthetic_split("train", 500, 10, seed=0):
        steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", example.thinking)
        assert len(steps) >= 2, example.thinking
        for a, op, b, result in steps:
            assert ops[op](int(a), int(b)) == int(result), example.thinking
            if op == "/":
                assert int(a) % int(b) == 0
        assert steps[-1][3] == example.answer
        item = example.prompt.split()[3].rstrip(".")
        assert example.thinking.endswith(f"has {example.answer} {item} in the end.")


def test_synthetic_letter_answers_name_the_option_holding_the_final_count() -> None:
    number = synthetic_split("train", 300, 100, seed=3)
    letter = synthetic_split("train", 300, 100, seed=3, answer="letter")
    letters = []
    for example in letter:
        question, *options = example.prompt.split("\n")
        listed = dict(option.split(". ") for option in options)
        assert list(listed) == ["A", "B", "C", "D"] and example.labels == ("A", "B", "C", "D")
        assert len(set(listed.values())) == 4 and all(int(value) > 0 for value in listed.values())
        final = re.search(r"has (\d+) \w+ in the end\.$", example.thinking).group(1)
        assert listed[example.answer] == final
        assert f"{example.answer}." not in example.thinking.split()  # the thinking never names it
        letters.append(example.answer)
    assert {letters.count(x) for x in "ABCD"} <= set(range(50, 100))  # the right letter is shuffled
    # Distractors come first from counts the problem passed through, as in the thinking.
    assert sum(any(f" {value} " in e.thinking for key, value in
                   (o.split(". ") for o in e.prompt.split("\n")[1:]) if key != e.answer)
               for e in letter) > 200
    # The number variant's data is unchanged by the other's existence; test problems stay out.
    assert number == synthetic_split("train", 300, 100, seed=3)
    test = synthetic_split("test", 300, 100, seed=3, answer="letter")
    assert not {e.prompt.split("\n")[0] for e in test} & {e.prompt.split("\n")[0] for e in letter}
    examples, _ = load_examples(data(synthetic={"n_train": 5, "n_test": 5, "seed": 0, "answer": "letter"}))
    assert all(e.labels and e.answer in "ABCD" for e in examples)


def test_synthetic_limit_and_unknown_split() -> None:
    examples, report = load_examples(data(limit=5))
    assert len(examples) == 5 and report.used == 5
    with pytest.raises(UserError, match="data.split"):
        load_examples(data(split="validation"))
