"""Rows from a local file: JSONL line by line (so errors name the line), JSON and Parquet
through `datasets.load_dataset`, the same code that reads the hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from .example import DataReport

Row = tuple[str, dict[str, Any]]  # (where it came from, e.g. "line 7"; the row)


def read_local_rows(path: Path, report: DataReport, skip_bad_rows: bool) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path, report, skip_bad_rows)
    elif suffix in (".json", ".parquet"):
        yield from _read_with_datasets(path, "json" if suffix == ".json" else "parquet")
    else:
        raise UserError(f"data.path: {path}: expected a .jsonl, .json or .parquet file")


def _read_jsonl(path: Path, report: DataReport, skip_bad_rows: bool) -> Iterator[Row]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"not UTF-8 ({err.reason} at byte {err.start})"
                yield from _bad_line(report, where, problem, skip_bad_rows)
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                yield from _bad_line(report, where, f"malformed JSON ({err.msg})", skip_bad_rows)
                continue
            if not isinstance(row, dict):
                problem = f"expected a JSON object, got {type(row).__name__}"
                yield from _bad_line(report, where, problem, skip_bad_rows)
                continue
            yield f"line {number}", row


def _bad_line(report: DataReport, where: str, problem: str, skip: bool) -> Iterator[Row]:
    if not skip:
        raise UserError(f"{where}: {problem} (set data.skip_bad_rows: true to skip such lines)")
    report.rows_read += 1
    report.drop("bad_line", where, problem)
    return iter(())


def _read_with_datasets(path: Path, builder: str) -> Iterator[Row]:
    import datasets

    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # the library wraps parser errors in many types
        raise UserError(f"data.path: {path}: cannot be read as {builder} ({_locate(path, err)})") from None
    for index, row in enumerate(table):
        yield f"row {index}", row


def _locate(path: Path, err: Exception) -> str:
    """Name the line of a malformed JSON file, which the library's error does not."""
    if path.suffix.lower() == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as bad:
            return f"not UTF-8 at byte {bad.start}"
        try:
            json.loads(text)
        except json.JSONDecodeError as bad:
            if bad.msg != "Extra data":
                return f"line {bad.lineno}: {bad.msg}"
            # JSON Lines under a .json name: find the first line that does not parse.
            for number, line in enumerate(text.splitlines(), start=1):
                try:
                    if line.strip():
                        json.loads(line)
                except json.JSONDecodeError as line_err:
                    return f"line {number}: {line_err.msg}"
    return first_line(err)
