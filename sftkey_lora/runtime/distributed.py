"""Several processes (torchrun, accelerate launch): who writes, and waiting for one another.

Every process trains; only the main one writes the run directory (run.json, adapters,
merged weights, plots, evaluation), and the others wait where they need its files.
accelerate's `PartialState` sets up the process group (NCCL on GPUs, gloo on a CPU).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

from ..errors import SharedUserError, UserError

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's place among all (torchrun and accelerate launch set it); 0 is the main one."""
    return int(os.environ.get("RANK", "0"))


@cache
def _state() -> Any:
    import torch
    from accelerate import PartialState

    check_one_gpu_per_process()
    say_when_not_sharded()
    # Without `cpu`, processes on a machine without a GPU would each think they are alone.
    return PartialState(cpu=not torch.cuda.is_available())


def check_one_gpu_per_process() -> None:
    """Each process of a machine takes the GPU of its local rank: more processes than GPUs is
    a launch mistake, named here before CUDA fails with "invalid device ordinal"."""
    import torch

    if not torch.cuda.is_available():
        return
    gpus, local = torch.cuda.device_count(), int(os.environ.get("LOCAL_RANK", "0"))
    if local >= gpus:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(local + 1))
        raise UserError(f"{per_node} processes were started on this machine, which has {gpus} GPU(s): "
                        f"start at most {gpus} (torchrun --nproc_per_node, accelerate launch "
                        "--num_processes)")


def is_main() -> bool:
    return world_size() == 1 or _state().is_main_process


def wait_for_everyone() -> None:
    if world_size() > 1:
        _state().wait_for_everyone()


def from_main(value: Any) -> Any:
    """The main process's `value`, in every process (a picklable object)."""
    if world_size() == 1:
        return value
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([value], from_process=0)[0]


def main_decides(check: Callable[[], T]) -> T:
    """`check` run by the main process alone, its result or its UserError in every process
    (raised there as a SharedUserError, which only the main process prints)."""
    outcome: tuple[T | None, str | None] = (None, None)
    if is_main():
        try:
            outcome = (check(), None)
        except UserError as err:
            outcome = (None, str(err))
    result, refusal = from_main(outcome)
    if refusal is not None:
        raise SharedUserError(refusal)
    return result  # type: ignore[return-value]


def part_together() -> None:
    """Every process leaves the process group at once, after a refusal they all share. A process
    that exits while another still holds its gloo connection can make that one abort (SIGABRT),
    which would turn the main process's exit 2 into a crash."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        wait_for_everyone()
        dist.destroy_process_group()


def sharded() -> bool:
    """Whether FSDP or DeepSpeed ZeRO shards the weights, so a layer's weights are whole only
    inside the model's own forward pass. accelerate shards on GPUs only: on a CPU it trains
    every process with the whole model, as DDP over gloo (`accelerate.state.AcceleratorState`)."""
    import torch

    return requested_engine() is not None and torch.cuda.is_available()


def requested_engine() -> str | None:
    """The sharding engine the launch asked for (`accelerate launch` sets these variables)."""
    flags = (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
    return next((engine for engine, flag in flags if os.environ.get(flag, "false").lower() == "true"), None)


def say_when_not_sharded() -> None:
    """A launch that asked for sharding on a machine without a GPU is told that it trains unsharded."""
    engine = requested_engine()
    if engine is not None and not sharded():
        logging.getLogger(__name__).warning(
            f"the launch asks for {engine}, which accelerate runs on GPUs only: on this machine every "
            "process trains a whole copy of the model (data parallel over gloo)")
