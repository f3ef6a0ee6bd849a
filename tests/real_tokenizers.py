"""Real tokenizers for the tests, built offline: Qwen2.5, Qwen3, Llama-3 and SmolLM3.

No model can be downloaded here, but the pinned llama-cpp-python source distribution on PyPI
ships llama.cpp's vocabulary-only GGUF files (MIT licence) with tokenizer test vectors. From
them this builds Hugging Face tokenizer directories with each model's special tokens, the
pre-tokenizer regex, the end-of-sequence and padding tokens of its base model, and a chat
template in the model's layout; each is checked against llama.cpp's test vectors, then cached
outside the repository (`$SFTKEY_TOKENIZERS`, else ~/.cache/sftkey-lora). Nothing derived from
the vocabularies is committed.

    python -m tests.real_tokenizers      # build (or find) them all; prints their directories
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sftkey_lora.pinned import cache_home, fetch_pinned

SDIST_URL = ("https://files.pythonhosted.org/packages/e4/b4/c8cd17629ced0b9644a71d399a91145aedef109c0333"
             "443bef015e45b704/llama_cpp_python-0.3.16.tar.gz")
SDIST_SHA256 = "34ed0f9bd9431af045bb63d9324ae620ad0536653740e9bb163a2e1fcb973be6"
MODELS_DIR = "vendor/llama.cpp/models"
TEST_SEPARATOR = "\n__ggml_vocab_test__\n"

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")  # numbers in groups of up to three

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
               "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

_QWEN_VISION = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
_QWEN_TOOLS = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
# id -> (content, special); the ids the published tokenizers give them.
QWEN25_ADDED = {151643 + i: (token, True) for i, token in
                enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_QWEN_VISION])}
QWEN25_ADDED |= {151657 + i: (token, False) for i, token in enumerate(_QWEN_TOOLS)}
QWEN3_ADDED = QWEN25_ADDED | {151665 + i: (token, False) for i, token in
                              enumerate(["<tool_response>", "</tool_response>", "<think>", "</think>"])}
# SmolLM3 keeps Llama-3's vocabulary and gives some reserved slots its own tokens.
SMOLLM3_RENAMED = {128002: ("<think>", False), 128003: ("</think>", False),
                   128004: ("<|finetune_right_pad_id|>", True),
                   128011: ("<|im_start|>", True), 128012: ("<|im_end|>", True)}


@dataclass(frozen=True)
class Spec:
    """One model family's tokenizer, as its base model publishes it."""

    gguf: str
    regular: int  # ids below are the BPE vocabulary, from the GGUF file; above, added tokens
    split: str
    eos: str
    pad: str | None
    bos: str | None
    chat_template: str
    whole_words: bool  # BPE `ignore_merges`: a word in the vocabulary is one token (Llama-3)
    added: dict[int, tuple[str, bool]] = field(default_factory=dict)  # over the GGUF's own


SPECS = {
    "qwen2.5": Spec("ggml-vocab-qwen2.gguf", 151643, QWEN2_SPLIT, "<|endoftext|>", "<|endoftext|>", None,
                    CHATML, False, QWEN25_ADDED),
    "qwen3": Spec("ggml-vocab-qwen2.gguf", 151643, QWEN2_SPLIT, "<|endoftext|>", "<|endoftext|>", None,
                  CHATML, False, QWEN3_ADDED),
    "llama-3": Spec("ggml-vocab-llama-bpe.gguf", 128000, LLAMA3_SPLIT, "<|end_of_text|>", None,
                    "<|begin_of_text|>", LLAMA3_CHAT, True),
    "smollm3": Spec("ggml-vocab-llama-bpe.gguf", 128000, LLAMA3_SPLIT, "<|end_of_text|>",
                    "<|finetune_right_pad_id|>", None, CHATML, True, SMOLLM3_RENAMED),
}
NAMES = tuple(SPECS)


def cache_root() -> Path:
    """Where the built tokenizers live, keyed by the sdist and this file's specs."""
    base = Path(os.environ.get("SFTKEY_TOKENIZERS") or cache_home())
    key = hashlib.sha256((SDIST_SHA256 + repr(sorted(SPECS.items()))).encode()).hexdigest()[:12]
    return base / f"real-tokenizers-{key}"


def tokenizer_dir(name: str) -> Path:
    """The directory of one real tokenizer, built on first use."""
    folder = cache_root() / name
    if not (folder / "tokenizer.json").is_file():
        build_all()
    return folder


def build_all() -> dict[str, Path]:
    """Every tokenizer of SPECS, built where missing; an error names what failed."""
    root = cache_root()
    missing = [name for name in SPECS if not (root / name / "tokenizer.json").is_file()]
    if missing:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            vocab_dir = _extract_vocabularies(Path(scratch))
            backends: dict[str, dict] = {}
            for name in missing:
                spec = SPECS[name]
                if spec.gguf not in backends:
                    backends[spec.gguf] = _from_gguf(vocab_dir, spec.gguf)
                built = Path(scratch) / name
                _write(built, spec, backends[spec.gguf])
                _check_vectors(built, vocab_dir / f"{spec.gguf}.inp", vocab_dir / f"{spec.gguf}.out")
                shutil.rmtree(root / name, ignore_errors=True)
                built.rename(root / name)
    return {name: root / name for name in SPECS}


def _extract_vocabularies(scratch: Path) -> Path:
    archive = fetch_pinned(SDIST_URL, SDIST_SHA256, scratch / "sdist.tar.gz")
    wanted = {spec.gguf + suffix for spec in SPECS.values() for suffix in ("", ".inp", ".out")}
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.split("/", 1)[-1].startswith(MODELS_DIR)
                   and Path(m.name).name in wanted]
        for member in members:
            member.name = Path(member.name).name
            tar.extract(member, scratch / "vocab", filter="data")
    archive.unlink()
    return scratch / "vocab"


def _from_gguf(vocab_dir: Path, gguf: str) -> dict:
    """The tokenizers-library JSON transformers builds from a GGUF vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(vocab_dir), gguf_file=gguf)
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _write(folder: Path, spec: Spec, backend: dict) -> None:
    """tokenizer.json and tokenizer_config.json of one model."""
    tok = json.loads(json.dumps(backend))
    added = {a["id"]: (a["content"], a["special"]) for a in tok["added_tokens"] if a["id"] >= spec.regular}
    added |= spec.added
    tok["model"]["ignore_merges"] = spec.whole_words
    tok["model"]["vocab"] = {t: i for t, i in tok["model"]["vocab"].items() if i < spec.regular}
    tok["added_tokens"] = [{"id": i, "content": content, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": special}
                           for i, (content, special) in sorted(added.items())]
    tok["normalizer"] = {"type": "NFC"} if spec.split == QWEN2_SPLIT else None
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": spec.split}, "behavior": "Isolated", "invert": False},
        byte_level]}
    tok["decoder"] = byte_level
    tok["post_processor"] = byte_level if spec.bos is None else {"type": "Sequence", "processors": [
        byte_level, _prepend(spec.bos, _id_of(added, spec.bos))]}
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": spec.bos, "eos_token": spec.eos,
              "pad_token": spec.pad, "chat_template": spec.chat_template, "model_max_length": 131072,
              "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def _id_of(added: dict[int, tuple[str, bool]], token: str) -> int:
    return next(i for i, (content, _) in added.items() if content == token)


def _prepend(token: str, token_id: int) -> dict:
    """The post-processor step that starts every sequence with `token` (Llama-3's BOS)."""
    def start(part: str, type_id: int) -> list[dict]:
        return [{"SpecialToken": {"id": token, "type_id": type_id}},
                {"Sequence": {"id": part, "type_id": type_id}}]

    return {"type": "TemplateProcessing", "single": start("A", 0), "pair": start("A", 0) + start("B", 1),
            "special_tokens": {token: {"id": token, "ids": [token_id], "tokens": [token]}}}


def _check_vectors(folder: Path, inputs: Path, outputs: Path) -> None:
    """llama.cpp's reference tokenizations (from the models' own tokenizers) must come out."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    texts = inputs.read_text(encoding="utf-8").split(TEST_SEPARATOR)[:-1]
    expected = outputs.read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(expected), (inputs, len(texts), len(expected))
    for text, ids in zip(texts, expected, strict=True):
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != [int(i) for i in ids.split()]:
            raise RuntimeError(f"{folder.name}: {text!r} tokenizes to {got}, llama.cpp says {ids.strip()}")


if __name__ == "__main__":
    for name, path in build_all().items():
        print(f"{name}: {path}")
    sys.exit(0)
