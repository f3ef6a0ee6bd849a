"""Resolve `model.name_or_path`; load the tokenizer and the model through `from_pretrained`.

The built-in model, a hub id and a local directory all go through the same code path;
only `builtin:NAME` is first mapped to the directory shipped inside the package.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line
from ..output import route_library_logs
from ..recipe import ModelConfig
from ..runtime.attention import use_grouped_attention_on_cpu
from ..runtime.distributed import is_main
from ..runtime.hardware import ResolvedPrecision, precision_of, torch_dtype
from ..tags import Tags
from .plan import TokenizerPlan

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).parents[1] / "builtin"


def resolve_model_path(name_or_path: str) -> str:
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path.removeprefix(BUILTIN_PREFIX)
    folder = BUILTIN_DIR / name
    if not (folder / "config.json").is_file():
        known = sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
        raise UserError(f"model.name_or_path: no built-in model {name!r} (built in: {known})")
    return str(folder)


def run_tokenizer(plan: TokenizerPlan) -> tuple[Any, list[int]]:
    """The run's tokenizer and the ids of the tags added to it as tokens (none unless planned);
    an end token the model's config does not name is reported before anything uses it."""
    tokenizer = load_tokenizer(plan.model)
    mismatch = end_token_mismatch(plan.model, tokenizer)
    if mismatch and is_main():
        log.warning(mismatch)
    return tokenizer, add_tag_tokens(tokenizer, plan.tags) if plan.add_tags else []


def load_tokenizer(cfg: ModelConfig) -> Any:
    """A fast tokenizer (offsets are needed for masks), as saved with the model."""
    from transformers import AutoTokenizer

    route_library_logs()
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
    return tokenizer


def add_tag_tokens(tokenizer: Any, tags: Tags) -> list[int]:
    """Register the four tags as added tokens that are never *special*: special tokens are
    dropped at decode time (`skip_special_tokens=True` in lm-eval) and fmt would read 0. A tag
    the tokenizer already has (Qwen3's `<think>`) keeps its id and row."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(tag, normalized=False, special=False) for tag in tags.all])
    return tokenizer.convert_tokens_to_ids(list(tags.all))


def load_model(cfg: ModelConfig, precision: ResolvedPrecision, *, vocab_size: int,
               weights: ResolvedPrecision | None = None):
    """The model to train or compare: in 4-bit NF4 when `model.quantization` says so
    (QLoRA), computing in `precision`; its other weights in `weights` (default `precision`);
    on the GPU when there is one."""
    import torch

    kwargs = {}
    if cfg.quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(cfg, torch_dtype(precision))
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = pretrained_model(cfg, vocab_size, dtype=torch_dtype(weights or precision), **kwargs)
    if cfg.quantization == "nf4":
        same_4bit_arithmetic_on_every_cpu(model)
    return model


def same_4bit_arithmetic_on_every_cpu(model: Any) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for its own kernel as soon
    as a layer runs without gradients (evaluation, the merge's comparisons), with bf16 block
    scales: other figures than training's dequantized weights (a merge KL of 8e-5 where it is
    0), and a shape error on some layer sizes. Every CPU keeps the one arithmetic instead."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def pretrained_model(cfg: ModelConfig, vocab_size: int, **kwargs: Any):
    """`from_pretrained` of `cfg` (a missing model is a user error), with the embedding grown
    to `vocab_size` rows when tags were added as tokens."""
    from transformers import AutoModelForCausalLM

    route_library_logs()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(cfg.name_or_path), revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code, **kwargs,
        )
    except (OSError, ValueError) as err:
        raise UserError(_missing_model_message(cfg.name_or_path, err)) from None
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    use_grouped_attention_on_cpu(model)
    return model


def end_token_mismatch(cfg: ModelConfig, tokenizer: Any) -> str | None:
    """One line when the tokenizer's eos is none of the end tokens the model's config and
    generation config name (a GGUF-converted tokenizer may name the wrong one): the run
    appends the tokenizer's eos to every response and aligns the model to it, so a wrong
    one teaches the model to end its turn with the wrong token."""
    from transformers import AutoConfig, GenerationConfig

    path = resolve_model_path(cfg.name_or_path)
    named: set[int] = set()
    # A folder may hold a tokenizer alone (inspect needs no weights): then nothing names an end.
    loaders = (lambda: AutoConfig.from_pretrained(path, revision=cfg.revision,
                                                  trust_remote_code=cfg.trust_remote_code),
               lambda: GenerationConfig.from_pretrained(path, revision=cfg.revision))
    for load in loaders:
        try:
            named |= _ids(getattr(load(), "eos_token_id", None))
        except (OSError, ValueError):
            continue
    if not named or tokenizer.eos_token_id in named:
        return None
    theirs = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} (id {i})" for i in sorted(named))
    return (f"model.name_or_path: the tokenizer's end token is {tokenizer.eos_token} (id "
            f"{tokenizer.eos_token_id}) but the model's config names {theirs}; this run ends every "
            f"response with the tokenizer's {tokenizer.eos_token} and stops there (set eos_token in "
            f"the model's tokenizer_config.json to change it)")


def _ids(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return set(value) if isinstance(value, list) else {value}


def declared_precision(cfg: ModelConfig) -> ResolvedPrecision:
    """The dtype the model's checkpoint declares (`dtype` in its config.json; fp32 where none)."""
    return precision_of(getattr(_config(cfg), "dtype", None))


def _config(cfg: ModelConfig) -> Any:
    """The model's config (a missing model is a user error)."""
    from transformers import AutoConfig

    route_library_logs()
    try:
        return AutoConfig.from_pretrained(resolve_model_path(cfg.name_or_path), revision=cfg.revision,
                                          trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(_missing_model_message(cfg.name_or_path, err)) from None


def nf4_config(cfg: ModelConfig, compute_dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _missing_model_message(name: str, err: Exception) -> str:
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        return f"model.name_or_path: {name} does not exist (give a model directory or a hub id)"
    if Path(name).exists():
        return f"model.name_or_path: {name} is not a model directory ({first_line(err)})"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "it could not be fetched"
    return (f"model.name_or_path: cannot load {name!r}: it is not a local directory and {why}, "
            "so its weights cannot be fetched. Download it where there is network "
            "(`hf download ORG/NAME --local-dir DIR`) and set model.name_or_path: DIR")

