"""The data-preparation benchmark: its rows read as OpenR1-Math rows, and the command runs."""

from __future__ import annotations

import json
import statistics

import pytest

from sftkey_lora.bench.prep import main, openr1_rows, write_parquet
from sftkey_lora.data import load_examples
from sftkey_lora.recipe import DataConfig


def test_rows_are_openr1_math_rows_of_realistic_length(tmp_path) -> None:
    rows = openr1_rows(400)
    assert openr1_rows(400) == rows  # seeded
    lengths = [len(solution) for solution in rows["solution"]]
    assert 1_000 < statistics.median(lengths) < 2_000 and max(lengths) > 3 * statistics.median(lengths)
    path = write_parquet(rows, tmp_path / "rows.parquet")
    examples, report = load_examples(DataConfig(source="openr1_math", path=path))
    assert report.used == 400 and examples[0].answer == rows["answer"][0]


@pytest.mark.slow
def test_the_command_prints_every_measurement(tmp_path, capsys) -> None:
    main(["--rows", "30", "--workdir", str(tmp_path)])
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["kit"]["rows"] == figures["floor"]["rows"] == 30
    assert figures["kit"]["tokens"] == figures["floor"]["tokens"] + 30  # the appended eos
    assert figures["kit/floor"]["seconds"] > 0
    assert figures["rerun"]["tokens"] == figures["kit"]["tokens"]  # read back from the cache
    assert (tmp_path / "cache").is_dir() and len(list((tmp_path / "cache").iterdir())) == 1
