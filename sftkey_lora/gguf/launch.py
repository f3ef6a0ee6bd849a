"""One of llama.cpp's converters, run in a process of its own (it puts its own `gguf` package
first on the path), with two decisions taken before it writes anything:

- a model whose architecture the converter has no class for exits with code 2 and one line
  naming the architecture;
- llama.cpp recognises a byte-level BPE pre-tokenizer by hashing a published tokenizer's
  output on a test text, so a tokenizer it has never seen (the built-in model's) is refused
  even when its split rule is one llama.cpp implements. Such a tokenizer is converted under
  that rule's name; `tests/test_gguf.py` checks that llama.cpp then tokenizes as transformers.

    python -m sftkey_lora.gguf.launch CONVERTERS_DIR MODEL_DIR SCRIPT [ARGS...]
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

REFUSED = 2
# llama.cpp's pre-tokenizer names, by the Hugging Face pre-tokenizer sequence that splits alike.
SPLIT_RULES = {
    "smollm": [{"type": "Digits", "individual_digits": True},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}],
}


def main(converters: Path, model_dir: Path, script: str, args: list[str]) -> None:
    sys.path[:0] = [str(converters), str(converters / "gguf-py")]
    check_architecture(model_dir)
    name_known_split_rules()
    sys.argv = [str(converters / script), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


def check_architecture(model_dir: Path) -> None:
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    architecture = get_model_architecture(ModelBase.load_hparams(model_dir, False), ModelType.TEXT)
    try:
        get_model_class(architecture)
    except NotImplementedError:
        print(f"--gguf: llama.cpp's converter has no conversion for the architecture {architecture}; "
              "export without --gguf and serve the safetensors model", file=sys.stderr)
        sys.exit(REFUSED)


def name_known_split_rules() -> None:
    from conversion.base import TextModel

    by_hash = TextModel.get_vocab_base_pre

    def by_hash_or_rule(self, tokenizer) -> str:  # noqa: ANN001 (the converter's own signature)
        try:
            return by_hash(self, tokenizer)
        except NotImplementedError:
            rule = split_rule(Path(self.dir_model) / "tokenizer.json")
            if rule is None:
                raise
            return rule

    TextModel.get_vocab_base_pre = by_hash_or_rule


def split_rule(tokenizer_file: Path) -> str | None:
    """llama.cpp's name for the tokenizer's split rule, where it implements that rule."""
    try:
        pre = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return None
    sequence = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    return next((name for name, rule in SPLIT_RULES.items() if sequence == rule), None)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
