"""What each step of the 7B QLoRA recipe's code path starts from and peaks at, on a CPU at a
152k-row vocabulary (width 512, 2 layers, fp32, 2 steps a stage, the real Qwen2.5 tokenizer,
OpenR1-shaped rows): at each step's start, after its collection, the tensors the process still
references (each storage once) and its resident set; and each step's peak resident set.
`--registry-kept` leaves a finished stage's bitsandbytes optimiser registry as it was, which is
what the kit did before it emptied it, to show what that held.

    python -m tests.step_memory [--registry-kept] [--work DIR]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from sftkey_lora.bench.prep import openr1_rows, write_parquet
from sftkey_lora.bench.workload import Workload, write_model
from sftkey_lora.cli import main as kit
from sftkey_lora.runtime import hardware
from sftkey_lora.train import merge, stage
from tests.real_tokenizers import tokenizer_dir
from tests.support import ROOT

RECIPE = ROOT / "recipes" / "qlora" / "qwen2.5-7b-openr1-math.yaml"
SHAPE = {"vocab_size": 152_064, "hidden_size": 512, "layers": 2, "heads": 8, "kv_heads": 2,
         "intermediate_size": 1024}


def live_tensor_mb() -> float:
    """The bytes of every tensor storage the process still references, each storage once."""
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return round(sum(storages.values()) / 2**20, 1)


def measure(work: Path, registry_kept: bool) -> dict[str, Any]:
    model = work / "model"
    if not (model / "config.json").is_file():
        write_model(Workload(**SHAPE), model)
        for file in tokenizer_dir("qwen2.5").iterdir():
            if file.is_file():
                shutil.copy(file, model / file.name)
    rows = write_parquet(openr1_rows(40), work / "rows.parquet")
    starts: list[dict[str, float]] = []
    reset = hardware.reset_peak_memory

    def reset_and_note() -> None:  # each step's first act: collect, then start its peak
        reset()
        starts.append({"live_tensors_mb": live_tensor_mb(), "resident_mb": hardware.resident_mb()})

    stage.reset_peak_memory = merge.reset_peak_memory = reset_and_note
    if registry_kept:
        stage.forget_optimizer_overrides = lambda: None
    before = {"live_tensors_mb": live_tensor_mb(), "resident_mb": hardware.resident_mb()}
    out = work / "run"
    code = kit(["run", str(RECIPE), "--output", str(out), "--fresh", f"--set=model.name_or_path={model}",
                f"--set=data.path={rows}", "--set=data.limit=null", "--set=training.max_steps=2",
                "--set=training.gradient_accumulation_steps=1", "--set=eval.tasks=[]",
                "--set=training.precision=fp32", "--set=format.max_length=1024", "--set=data.holdout=2"])
    if code != 0:
        raise SystemExit(f"the run exited {code}; see {out / 'run.log'}")
    steps = json.loads((out / "run.json").read_text())["steps"]
    return {"registry_kept": registry_kept, "before_stage1": before,
            "step_starts": dict(zip(steps, starts, strict=True)),
            "peaks_mb": {name: entry.get("peak_memory_mb") for name, entry in steps.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry-kept", action="store_true",
                        help="leave a finished stage's optimiser registry as it was (the old behaviour)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the run goes (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sftkey-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(measure(work, args.registry_kept)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
