"""The cache of encoded rows: read back instead of encoded again when nothing that decides the
encoding changed, encoded again when anything did, and never in the way when it cannot be used."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest

from sftkey_lora.data import DataReport
from sftkey_lora.data.synthetic import synthetic_split
from sftkey_lora.prep import cache
from sftkey_lora.prep.prepare import encode_examples
from sftkey_lora.recipe import FormatConfig

EXAMPLES = synthetic_split("train", n_train=40, n_test=1, seed=5)
FMT = FormatConfig(system_prompt="")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTKEY_LORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def encoded(tokenizer, examples=EXAMPLES, fmt=FMT, tagged=True, use_cache=True):
    report = DataReport("synthetic", "train")
    return encode_examples(examples, tokenizer, fmt, tagged, report, cache=use_cache), report


def encoding_forbidden(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(cache, "encode_all", fail)


def same_rows(a, b) -> bool:
    fields = ("input_ids", "segments", "in_response", "in_key")
    return len(a) == len(b) and all(
        x.example == y.example and all(np.array_equal(getattr(x, f), getattr(y, f)) for f in fields)
        for x, y in zip(a, b, strict=True))


def test_a_rerun_reads_the_rows_back_without_encoding(tiny_tokenizer, cache_dir, monkeypatch) -> None:
    first, _ = encoded(tiny_tokenizer)
    assert len(list(cache_dir.iterdir())) == 1
    encoding_forbidden(monkeypatch)
    again, _ = encoded(tiny_tokenizer)
    assert same_rows(first, again)
    assert isinstance(again[0].input_ids, np.memmap)  # read from disk, not held in memory


def test_max_length_is_applied_to_cached_rows_with_the_same_drops(tiny_tokenizer, cache_dir,
                                                                   monkeypatch) -> None:
    rows, _ = encoded(tiny_tokenizer)
    limit = sorted(len(row.input_ids) for row in rows)[len(rows) // 2]
    fmt = FMT.model_copy(update={"max_length": limit})
    fresh, fresh_report = encoded(tiny_tokenizer, fmt=fmt, use_cache=False)
    encoding_forbidden(monkeypatch)
    cached, cached_report = encoded(tiny_tokenizer, fmt=fmt)
    assert same_rows(fresh, cached) and 0 < len(cached) < len(rows)
    assert cached_report.to_dict() == fresh_report.to_dict()
    assert cached_report.dropped["too_long"] == len(rows) - len(cached)


@pytest.mark.parametrize("change", ["format", "tagged", "tokenizer", "example"])
def test_anything_that_decides_the_encoding_makes_a_new_entry(tiny_tokenizer, cache_dir, change) -> None:
    from sftkey_lora.recipe import ModelConfig
    from sftkey_lora.tags import PAPER_TAGS
    from sftkey_lora.train.loading import run_tokenizer
    from sftkey_lora.train.plan import TokenizerPlan

    encoded(tiny_tokenizer)
    if change == "format":
        rows, _ = encoded(tiny_tokenizer, fmt=FMT.model_copy(update={"system_prompt": "Be brief."}))
    elif change == "tagged":
        rows, _ = encoded(tiny_tokenizer, tagged=False)
    elif change == "tokenizer":  # the same files, with the tags added as tokens
        tagged_tokenizer, _ = run_tokenizer(TokenizerPlan(ModelConfig(), add_tags=True, tags=PAPER_TAGS))
        rows, _ = encoded(tagged_tokenizer)
    else:
        edited = [dataclasses.replace(EXAMPLES[0], thinking=EXAMPLES[0].thinking + " Check."), *EXAMPLES[1:]]
        rows, _ = encoded(tiny_tokenizer, examples=edited)
    assert len(list(cache_dir.iterdir())) == 2
    assert not isinstance(rows[0].input_ids, np.memmap)  # encoded, not read


@pytest.mark.parametrize(("name", "damage"), [
    ("in_key.npy", b"cut short"), ("input_ids.npy", b""), ("bounds.npy", b"\x00" * 200),
    ("segments.npy", None),  # deleted
])
def test_an_unusable_entry_is_encoded_again_and_replaced(tiny_tokenizer, cache_dir, name, damage) -> None:
    first, _ = encoded(tiny_tokenizer)
    (entry,) = cache_dir.iterdir()
    if damage is None:
        (entry / name).unlink()
    else:
        (entry / name).write_bytes(damage)
    again, _ = encoded(tiny_tokenizer)
    assert same_rows(first, again) and not isinstance(again[0].input_ids, np.memmap)
    third, _ = encoded(tiny_tokenizer)  # the repaired entry is read back
    assert same_rows(first, third) and isinstance(third[0].input_ids, np.memmap)
    assert [path.name for path in cache_dir.iterdir()] == [entry.name]  # nothing left aside


def test_temporaries_of_killed_writers_are_swept_once_old(tiny_tokenizer, cache_dir) -> None:
    cache_dir.mkdir()
    stale, recent = cache_dir / ".abc.x1.tmp", cache_dir / ".abc.x2.tmp"
    for folder in (stale, recent):
        folder.mkdir()
        (folder / "bounds.npy").write_bytes(b"half")
    old = time.time() - cache.SWEEP_AFTER - 60
    os.utime(stale, (old, old))
    encoded(tiny_tokenizer)
    assert not stale.exists() and recent.exists()  # another writer may still be filling it


def test_the_code_that_renders_and_tokenizes_is_in_the_key(tiny_tokenizer, cache_dir, monkeypatch) -> None:
    encoded(tiny_tokenizer)
    versions = {**cache.code_versions(), "transformers": "0.0.1"}
    monkeypatch.setattr(cache, "code_versions", lambda: versions)
    rows, _ = encoded(tiny_tokenizer)
    assert len(list(cache_dir.iterdir())) == 2 and not isinstance(rows[0].input_ids, np.memmap)
    assert set(cache.RENDERERS) == {"sftkey-lora", "transformers", "jinja2", "tokenizers"}


def test_without_the_cache_or_a_writable_folder_rows_are_still_encoded(tiny_tokenizer, tmp_path,
                                                                       monkeypatch) -> None:
    monkeypatch.setenv("SFTKEY_LORA_CACHE", str(tmp_path / "off"))
    plain, _ = encoded(tiny_tokenizer, use_cache=False)
    assert not (tmp_path / "off").exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("SFTKEY_LORA_CACHE", str(blocked))  # a folder cannot be made there
    rows, _ = encoded(tiny_tokenizer)
    assert same_rows(plain, rows)


def test_an_entry_garbled_inside_an_array_is_found_by_its_manifest(tiny_tokenizer, cache_dir) -> None:
    """Bytes flipped in the data of an array leave a valid array of the right length: only
    the manifest tells it from the rows that were written."""
    first, _ = encoded(tiny_tokenizer)
    (entry,) = cache_dir.iterdir()
    data = bytearray((entry / "input_ids.npy").read_bytes())
    data[-8:] = bytes(byte ^ 0xFF for byte in data[-8:])
    (entry / "input_ids.npy").write_bytes(bytes(data))
    assert len(np.load(entry / "input_ids.npy")) == sum(len(row.input_ids) for row in first)
    again, _ = encoded(tiny_tokenizer)
    assert same_rows(first, again) and not isinstance(again[0].input_ids, np.memmap)
