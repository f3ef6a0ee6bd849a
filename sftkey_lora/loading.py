"""Resolve `model.name_or_path` and load the tokenizer through `from_pretrained`.

The built-in model, a hub id and a local directory all go through the same code path;
only `builtin:NAME` is first mapped to the directory shipped inside the package.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError, first_line
from .recipe import FormatConfig, ModelConfig
from .tags import ALL_TAGS

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).parent / "builtin"


def resolve_model_path(name_or_path: str) -> str:
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path.removeprefix(BUILTIN_PREFIX)
    folder = BUILTIN_DIR / name
    if not (folder / "config.json").is_file():
        known = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
        raise UserError(f"model.name_or_path: no built-in model {name!r} (built in: {known})")
    return str(folder)


def load_tokenizer(cfg: ModelConfig, fmt: FormatConfig):
    """A fast tokenizer (offsets are needed for masks), with tags added if the recipe asks."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise UserError(_missing_model_message(cfg.name_or_path, err)) from None
    if not tokenizer.is_fast:
        raise UserError(f"model.name_or_path: {cfg.name_or_path} has only a slow tokenizer; a fast "
                        "one (tokenizer.json) is needed to map characters to tokens")
    if fmt.tags == "added_tokens":
        add_tag_tokens(tokenizer)
    return tokenizer


def add_tag_tokens(tokenizer) -> list[int]:
    """Register the four tags as added tokens that are never *special*: special tokens are
    dropped at decode time (`skip_special_tokens=True` in lm-eval) and fmt would read 0."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(tag, normalized=False, special=False) for tag in ALL_TAGS])
    return tokenizer.convert_tokens_to_ids(list(ALL_TAGS))


def _missing_model_message(name: str, err: Exception) -> str:
    if Path(name).exists() or name.startswith(("/", "./", "../")):
        return f"model.name_or_path: {name} is not a model directory ({first_line(err)})"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "it could not be fetched"
    return (f"model.name_or_path: cannot load {name!r}: it is not a local directory and {why}, "
            "so its weights cannot be fetched. Download it where there is network "
            "(`hf download ORG/NAME --local-dir DIR`) and set model.name_or_path: DIR")

