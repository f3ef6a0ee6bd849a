import sys

import pytest

from sftkey_lora.train.hardware import peak_memory, reset_peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak is reset through /proc on Linux")
def test_each_stage_reports_its_own_peak_memory() -> None:
    block = bytearray(400 * 2**20)
    block[:: 4096] = b"\x01" * len(block[:: 4096])  # touch every page, so it is resident
    with_block = peak_memory()["peak_memory_mb"]
    del block
    reset_peak_memory()
    after = peak_memory()["peak_memory_mb"]
    assert with_block >= 400
    assert after < with_block - 300


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from /proc on Linux")
def test_resident_memory_follows_what_is_held() -> None:
    from sftkey_lora.train.hardware import resident_mb

    before = resident_mb()
    block = bytearray(200 * 2**20)
    block[:: 4096] = b"\x01" * len(block[:: 4096])
    held = resident_mb()
    assert held - before > 150 and held <= peak_memory()["peak_memory_mb"]
    del block
    assert resident_mb() < held - 150
