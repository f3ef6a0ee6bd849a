"""GGUF files from a plain model directory or a LoRA adapter, through llama.cpp's converters;
the k-quants (`q4_k_m`, …) through its quantizer, from the converter's 16-bit file."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from ..errors import UserError
from .launch import REFUSED
from .llamacpp import INSTALL_HINT, binding, converters_dir, quantizer_types

CONVERTER_TYPES = ("f16", "bf16", "q8_0", "f32")  # what convert_hf_to_gguf.py writes itself
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # where `python -m sftkey_lora…` finds the package
log = logging.getLogger(__name__)


def check_types(asked: Sequence[str]) -> list[str]:
    """The types asked for, each one llama.cpp offers; the converter's needs installed."""
    if find_spec("sentencepiece") is None:  # the converter imports it even for BPE vocabularies
        raise UserError(f"--gguf: llama.cpp's converter needs the sentencepiece package: {INSTALL_HINT}")
    others = [name for name in asked if name not in CONVERTER_TYPES]
    if others:
        offered = quantizer_types()
        unknown = [name for name in others if name not in offered]
        if unknown:
            raise UserError(f"--gguf {unknown[0]}: not a type llama.cpp offers; it offers "
                            f"{', '.join([*CONVERTER_TYPES, *sorted(set(offered) - set(CONVERTER_TYPES))])}")
    return list(dict.fromkeys(asked))


def model_gguf(model_dir: Path, out: Path, gguf_type: str, name: str, finetune: str) -> Path:
    """`model_dir` (weights, config, tokenizer) as one GGUF file of `gguf_type`, named `name`,
    with `finetune` as its `general.finetune` (the converter would guess it from the folder's
    name, which for an export is a temporary one)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:  # beside it: the 16-bit file is large
        override = Path(scratch) / "metadata.json"
        override.write_text(json.dumps({"general.finetune": finetune}), encoding="utf-8")
        args = ["--model-name", name, "--metadata", str(override)]
        if gguf_type in CONVERTER_TYPES:
            run_converter(model_dir, "convert_hf_to_gguf.py", [str(model_dir), "--outtype", gguf_type,
                                                               "--outfile", str(out), *args])
            return out
        whole = Path(scratch) / "unquantized.gguf"
        run_converter(model_dir, "convert_hf_to_gguf.py", [str(model_dir), "--outtype", "auto",
                                                           "--outfile", str(whole), *args])
        quantize(whole, out, gguf_type)
    return out


def lora_gguf(adapter_dir: Path, base_dir: Path, out: Path, gguf_type: str) -> Path:
    """A LoRA adapter as llama.cpp's adapter GGUF (`--lora` at load time) over `base_dir`."""
    run_converter(base_dir, "convert_lora_to_gguf.py", ["--base", str(base_dir), "--outtype", gguf_type,
                                                        "--outfile", str(out), str(adapter_dir)])
    return out


def quantize(source: Path, out: Path, gguf_type: str) -> None:
    """llama.cpp's quantizer (`llama-quantize`), in this process through the binding."""
    llama_cpp = binding()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quantizer_types()[gguf_type]
    params.nthread = os.cpu_count() or 1
    failed = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if failed:  # the i-quants of two bits and less, for one, need an importance matrix
        raise UserError(f"--gguf {gguf_type}: llama.cpp's quantizer refused to write it (code {failed}); "
                        "choose another type, e.g. q4_k_m")


def run_converter(model_dir: Path, script: str, args: list[str]) -> None:
    """One converter run; its output goes to the log, its refusal to a UserError."""
    path = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "sftkey_lora.gguf.launch", str(converters_dir()), str(model_dir),
               script, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": path})
    for line in (done.stdout + done.stderr).splitlines():
        log.debug(f"{script}: {line}")
    if done.returncode == REFUSED:
        raise UserError(done.stderr.strip().splitlines()[-1])
    if done.returncode:
        raise RuntimeError(f"llama.cpp's {script} failed (exit {done.returncode}) on {model_dir}:\n"
                           + "\n".join(done.stderr.strip().splitlines()[-12:]))
