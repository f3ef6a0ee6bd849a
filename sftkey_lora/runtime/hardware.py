"""What the machine offers: the precision to train in, and how much memory a stage used."""

from __future__ import annotations

import resource
import sys
from typing import Any, Literal

ResolvedPrecision = Literal["bf16", "fp16", "fp32"]


def resolve_precision(precision: str) -> ResolvedPrecision:
    """`auto`: bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on a CPU."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    import torch

    if not cuda_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


DTYPE_NAMES: dict[str, ResolvedPrecision] = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def torch_dtype(precision: ResolvedPrecision) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def precision_of(dtype: Any) -> ResolvedPrecision:
    """The precision of a torch dtype or of a config's dtype name; fp32 for none or another."""
    return DTYPE_NAMES.get(str(dtype).removeprefix("torch."), "fp32")


def device_summary() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(), "count": torch.cuda.device_count()}
    return {"type": "cpu", "threads": torch.get_num_threads()}


def reset_peak_memory() -> None:
    """Start a new peak: GPU memory statistics, or on Linux the process's peak resident set
    (VmHWM, reset through /proc/self/clear_refs), so each stage reports its own peak.

    What earlier steps left is collected first: the Trainer's reference cycles keep a finished
    stage's model on the GPU until a garbage collection (7.4 GiB of a 7B 4-bit stage)."""
    import torch
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then runs from the process's start


def peak_memory() -> dict[str, Any]:
    """Peak GPU memory allocated since the last reset; on a CPU, the process's peak resident
    set since the last reset (Linux), or since it started."""
    import torch

    if torch.cuda.is_available():
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "memory_kind": "cuda_max_allocated"}
    return {"peak_memory_mb": process_peak_mb(), "memory_kind": "process_peak_rss"}


def process_peak_mb() -> float:
    """The process's peak resident set in MB, since the last reset (Linux) or its start: host
    memory, whatever device the training uses."""
    return round(_peak_rss_bytes() / 2**20, 1)


def resident_mb() -> float | None:
    """The process's resident set now, in MB (Linux; None elsewhere)."""
    found = _proc_status_bytes("VmRSS")
    return None if found is None else round(found / 2**20, 1)


def _peak_rss_bytes() -> int:
    found = _proc_status_bytes("VmHWM")
    if found is not None:
        return found
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _proc_status_bytes(field: str) -> int | None:
    """A memory figure of /proc/self/status (Linux), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None
