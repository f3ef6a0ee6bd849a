"""A pinned download is kept only when its SHA-256 is the pinned one."""

from __future__ import annotations

import hashlib

import pytest

from sftkey_lora.pinned import fetch_pinned


def test_a_file_with_the_pinned_checksum_is_kept_and_any_other_refused(tmp_path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    kept = fetch_pinned(source.as_uri(), digest, tmp_path / "kept.bin")
    assert kept.read_bytes() == b"weights"
    with pytest.raises(RuntimeError, match=f"sha256 {digest}, expected 0+"):
        fetch_pinned(source.as_uri(), "0" * 64, tmp_path / "refused.bin")
    assert not (tmp_path / "refused.bin").exists()
