"""How much memory a step used: the peak on the device the step ran on (the GPU's allocator, or
the process's resident set on a CPU), reset between steps, and the resident set now."""

import subprocess
import sys

import pytest
import torch

from sftkey_lora.runtime.hardware import peak_memory, reset_peak_memory

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="read from /proc on Linux")


def block(mb: int) -> torch.Tensor:
    """`mb` MB on the device, every page written (so resident on a CPU)."""
    return torch.ones(mb * 2**18, dtype=torch.float32, device=DEVICE)


@on_linux
def test_each_stage_reports_its_own_peak_memory() -> None:
    held = block(400)
    with_block = peak_memory()["peak_memory_mb"]
    del held
    reset_peak_memory()
    after = peak_memory()["peak_memory_mb"]
    assert with_block >= 400
    assert after < with_block - 300


# In a process of its own: in a process with other threads (a pytest-xdist worker), a
# collection already running in one of them makes gc.collect() return at once, collecting
# nothing, and the cycle would stay.
REFERENCE_CYCLE = """
import gc, torch
from sftkey_lora.runtime.hardware import peak_memory, reset_peak_memory
gc.disable()
cycle = [torch.ones(400 * 2**18, dtype=torch.float32, device={device!r})]
cycle.append(cycle)
with_cycle = peak_memory()["peak_memory_mb"]
del cycle  # unreachable now, but freed only by a collection
reset_peak_memory()
print(with_cycle, peak_memory()["peak_memory_mb"])
"""


@on_linux
def test_a_new_peak_starts_without_what_only_a_reference_cycle_still_held() -> None:
    """A finished stage's model can stay alive in reference cycles (the Trainer's); the next
    step's peak must not start above it."""
    done = subprocess.run([sys.executable, "-c", REFERENCE_CYCLE.format(device=DEVICE)], capture_output=True,
                          text=True, timeout=120, check=True)
    with_cycle, after = map(float, done.stdout.split())
    assert after < with_cycle - 300


@on_linux
def test_resident_memory_follows_what_is_held() -> None:
    """An anonymous mapping, not a Python object: an allocator that keeps freed pages
    resident (tcmalloc, tuned glibc) would otherwise hide both the rise and the fall."""
    import mmap

    from sftkey_lora.runtime.hardware import resident_mb

    size = 200 * 2**20
    before = resident_mb()
    held = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        held[offset] = 1
    with_block = resident_mb()
    assert with_block - before > 150
    held.close()
    assert resident_mb() < with_block - 150
