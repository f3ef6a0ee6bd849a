"""The contest: every contender on both stages, each in a process of its own on the same
model, adapter, rows and labels; step time, tokens/s, peak memory and the ratios ours/theirs."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..strategies import METHOD, STRATEGIES, LabelKind
from .workload import Workload, write_model

# The method's stages and their labels: what is timed.
STAGE_LABELS: dict[str, LabelKind] = {stage.name: stage.labels for stage in STRATEGIES[METHOD].stages}
STAGES = tuple(STAGE_LABELS)
# And "unsloth", on a GPU where it is installed. The floor is no trainer but a limit: the same
# backbone's forward and backward with no head at all, which a key-only stage 2 approaches.
CONTENDERS = ("sftkey", "trl", "plain", "floor")
OURS, FLOOR = "sftkey", "floor"
# Ratio keys: against TRL unprefixed, against the others with their name as prefix.
BASELINE = "trl"
FIGURES = {"step_time": "step_time_s", "tokens_per_s": "tokens_per_s", "peak_mem": "peak_mem_mb"}


def run_bench(workload: Workload, contenders: Sequence[str] = CONTENDERS,
              progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Every contender on both stages; returns per stage the ratios and each one's figures."""
    if "trl" in contenders:
        check_trl_runs_here()
    results: dict[str, dict[str, dict[str, Any]]] = {stage: {} for stage in STAGES}
    with tempfile.TemporaryDirectory(prefix="sftkey-bench-") as tmp:
        model_dir = write_model(workload, Path(tmp) / "model")
        for stage in STAGES:
            for contender in contenders:
                progress(f"{stage} {contender} ...")
                results[stage][contender] = measure_apart(workload, model_dir, contender, stage)
    return {stage: {**ratios(figures), "contenders": figures} for stage, figures in results.items()}


def default_contenders() -> list[str]:
    """sftkey, trl, plain and the floor; and unsloth where it can run (a GPU, and the package installed)."""
    from importlib.util import find_spec

    from ..runtime.hardware import cuda_available

    return list(CONTENDERS) + (["unsloth"] if cuda_available() and find_spec("unsloth") else [])


def measure_apart(workload: Workload, model_dir: Path, contender: str, stage: str,
                  timeout: float | None = None) -> dict[str, Any]:
    """One contender on one stage in a process of its own (its peak memory is its own)."""
    args = [workload.to_json(), str(model_dir), contender, stage]
    # unsloth patches transformers only if it is imported first.
    worker = "sftkey_lora.bench.worker"
    start = (["-c", f"import unsloth, runpy; runpy.run_module('{worker}', run_name='__main__')"]
             if contender == "unsloth" else ["-m", worker])
    command = [sys.executable, *start, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise UserError(f"bench: {contender} on {stage} failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ours/theirs for each figure; `losses_agree`: every trainer saw the same first-step loss."""
    ours = figures[OURS]
    out: dict[str, Any] = {}
    for other, theirs in figures.items():
        if other == OURS:
            continue
        prefix = "" if other == BASELINE else f"{other}_"
        for name, key in FIGURES.items():
            out[f"{prefix}{name}_ratio"] = round(ours[key] / theirs[key], 3)
    first = [result["losses"][0] for name, result in figures.items() if name != FLOOR]  # no head, no loss
    out["losses_agree"] = max(first) - min(first) <= 1e-3 * max(abs(x) for x in first)
    return out


def check_trl_runs_here(version: str | None = None, cuda: bool | None = None) -> None:
    """TRL before 1.16 computes its loss only with Triton kernels, which need a GPU."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from packaging.version import Version

    from ..runtime.hardware import cuda_available

    try:
        version = version or installed("trl")
    except PackageNotFoundError:
        raise UserError("bench: TRL is not installed; pip install 'sftkey-lora[bench]'") from None
    if not (cuda_available() if cuda is None else cuda) and Version(version) < Version("1.16"):
        raise UserError(f"bench: TRL {version} computes its loss with Triton kernels, which need a GPU; "
                        "on a CPU install trl>=1.16 (pip install 'sftkey-lora[bench]')")


def setting(workload: Workload, contenders: Sequence[str]) -> str:
    """The line printed above the table: machine, versions, workload, and how TRL scores here."""
    from importlib.metadata import version

    from ..runtime.hardware import cuda_available, device_summary

    device = device_summary()
    where = f"{device['name']}" if device["type"] == "cuda" else f"CPU, {device['threads']} threads"
    versions = ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "peft", "trl")
                         if name != "trl" or "trl" in contenders)
    weights = f"{Path(workload.model).name}'s weights, " if workload.model else ""
    line = (f"{where}; {versions}; {weights}Llama {workload.layers}x{workload.hidden_size}, "
            f"vocab {workload.vocab_size}, {workload.quantization} base, "
            f"batch {workload.batch_size}x{workload.seq_len}, "
            f"key {workload.key_tokens} tokens; mean of {workload.steps} steps after {workload.warmup_steps}")
    if "trl" in contenders:
        line += ("\nTRL scores only labelled positions on a GPU (Triton), but every position, in chunks, "
                 "elsewhere" if not cuda_available() else "\nTRL scores only labelled positions (Triton)")
    return line


def table(report: dict[str, Any]) -> str:
    """Markdown: one row per stage and contender, and ours/theirs beside each of theirs."""
    gpu = any("mfu" in r for stage in STAGES for r in report[stage]["contenders"].values())
    lines = ["| stage | trainer | step (s) | tokens/s | peak memory (MB) | ours/theirs: step | memory |"
             + (" MFU |" if gpu else ""),
             "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "")]
    for stage in STAGES:
        for contender, result in report[stage]["contenders"].items():
            prefix = "" if contender == BASELINE else f"{contender}_"
            versus = "– | –" if contender == OURS else (f"{report[stage][prefix + 'step_time_ratio']:.2f}× | "
                                                        f"{report[stage][prefix + 'peak_mem_ratio']:.2f}×")
            mfu = f" {result.get('mfu') or '–'} |" if gpu else ""
            lines.append(f"| {stage} | {contender} | {result['step_time_s']:.2f} "
                         f"| {result['tokens_per_s']:.0f} | {result['peak_mem_mb']:.0f} | {versus} |{mfu}")
    return "\n".join(lines)
