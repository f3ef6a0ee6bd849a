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


def torch_dtype(precision: ResolvedPrecision) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def device_summary() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(), "count": torch.cuda.device_count()}
    return {"type": "cpu", "threads": torch.get_num_threads()}


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, Any]:
    """Peak GPU memory allocated since the last reset; on a CPU, the process's peak resident
    set, which only grows, so a later stage reports at least an earlier one's figure."""
    import torch

    if torch.cuda.is_available():
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "memory_kind": "cuda_max_allocated"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_memory_mb": round(rss_kib * scale / 2**20, 1), "memory_kind": "process_peak_rss"}
