"""A folder's manifest finds any file cut short, zeroed, garbled or removed since it was
written, and a damaged manifest is itself named."""

from __future__ import annotations

import pytest

from sftkey_lora.errors import UserError
from sftkey_lora.rundir.manifest import MANIFEST, damaged, refuse_damaged_export, write_manifest


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text('{"layers": 2}')
    write_manifest(tmp_path)
    return tmp_path


def flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_whole_folder_has_nothing_damaged(folder) -> None:
    assert damaged(folder) == []


@pytest.mark.parametrize("damage", [
    lambda path: path.write_bytes(path.read_bytes()[:100]),  # cut short
    lambda path: path.write_bytes(bytes(path.stat().st_size)),  # zeroed, same length
    flip,  # one byte changed
    lambda path: path.unlink(),
])
def test_each_damage_is_found_and_named(folder, damage) -> None:
    damage(folder / "weights.bin")
    assert damaged(folder) == ["weights.bin"]


def test_files_in_sub_folders_are_covered(folder) -> None:
    flip(folder / "sub" / "config.json")
    assert damaged(folder) == ["sub/config.json"]


def test_a_damaged_manifest_names_itself(folder) -> None:
    (folder / MANIFEST).write_text('{"weights.bin": ')
    assert damaged(folder) == [MANIFEST]


def test_a_folder_without_a_manifest_is_taken_as_it_is(tmp_path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"written before manifests")
    assert damaged(tmp_path) == []


def test_a_damaged_export_is_refused_naming_the_file(folder) -> None:
    refuse_damaged_export(folder)
    flip(folder / "weights.bin")
    refuse_damaged_export(folder, "sub/config.json")  # only that file is read
    with pytest.raises(UserError, match=r"weights\.bin: changed since it was written; export the run again"):
        refuse_damaged_export(folder)
