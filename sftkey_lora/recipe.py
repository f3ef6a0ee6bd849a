"""Recipe: the YAML a user writes, turned into one typed, validated config.

Every default lives here and nowhere else. Loading never raises anything but
`UserError`, whose message names the dotted field or the file at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data.sources import SOURCES, task_name
from .data.synthetic import SyntheticAnswer
from .errors import UserError, first_line
from .strategies import METHOD, STAGE_NAMES, STRATEGIES
from .tags import PAPER_TAGS, Tags, paper_system_prompt

# Appendix C.1 of the paper with the paper's tags: the default system prompt for base models.
PAPER_SYSTEM_PROMPT = paper_system_prompt(PAPER_TAGS)

# The allowed values, from the one table of each (validation lists them in its messages).
Strategy = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]
Source = Literal[tuple(SOURCES)]  # type: ignore[valid-type]
StageName = Literal[STAGE_NAMES]  # type: ignore[valid-type]
SegmentationRule = Literal["gsm8k", "answer_is", "boxed", "last_line"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
# The `optim` values of TrainingArguments offered here (paged ones page only on a GPU).
Optimizer = Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit",
                    "paged_adamw_32bit", "adafactor", "sgd"]


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


class _Section(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    # `builtin:tiny` is the offline model shipped with the package; anything else is a
    # hub id or a local directory, loaded through the same `from_pretrained` path.
    name_or_path: str = "builtin:tiny"
    revision: str | None = None
    trust_remote_code: bool = False
    # `nf4`: the base is loaded in 4-bit NF4 (QLoRA); `none`: in 16-bit (plain LoRA).
    quantization: Literal["nf4", "none"] = "nf4"
    # Quantize the 4-bit scales too (saves ~0.4 bit per weight).
    double_quant: bool = True
    # `unsloth`: the base loaded by unsloth's FastLanguageModel (its 4-bit loading, LoRA,
    # gradient checkpointing and loss kernels; CUDA only, `pip install 'sftkey-lora[unsloth]'`);
    # the stages, labels and Trainer stay ours.
    backend: Literal["transformers", "unsloth"] = "transformers"


class SyntheticConfig(_Section):
    n_train: int = Field(2000, gt=0)
    n_test: int = Field(200, gt=0)
    seed: int = 0
    # `number`: the final count, which the thinking already states; `letter`: the letter of
    # the right one of four listed options, which the thinking never names (data/synthetic.py).
    answer: SyntheticAnswer = "number"


class DataConfig(_Section):
    source: Source = "synthetic"
    # A local JSON/JSONL/Parquet file in the source's own schema, used instead of the hub.
    path: Path | None = None
    split: str = "train"
    limit: int | None = Field(None, gt=0)
    # Examples kept out of training: the merge KL check and the per-segment loss curves use them.
    holdout: int = Field(32, gt=0)
    # Malformed JSON lines are an error unless this is set; then they are counted and skipped.
    skip_bad_rows: bool = False
    # How a raw `response` (jsonl source) is split into thinking and answer; first match wins.
    segmentation: list[SegmentationRule] = ["gsm8k", "answer_is", "boxed", "last_line"]
    synthetic: SyntheticConfig = SyntheticConfig()
    # Keep encoded rows on disk ($SFTKEY_LORA_CACHE) so a rerun, inspect or another strategy
    # with the same tokenizer and format does not encode them again.
    cache: bool = True

    _path_exists = field_validator("path")(lambda value: _existing_file(value))

    @field_validator("segmentation")
    @classmethod
    def _some_rule(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one rule")
        return value


class FormatConfig(_Section):
    # `base`: system prompt + "User:"/"Assistant:" lines; `chat`: the tokenizer's chat template.
    template: Literal["base", "chat"] = "base"
    # Unset: the paper's prompt (Appendix C.1) naming `tag_strings`.
    system_prompt: str = PAPER_SYSTEM_PROMPT
    # Tags as plain text, or as added (never special) tokens with trainable embedding rows.
    tags: Literal["text", "added_tokens"] = "text"
    # The four tag strings: the paper's by default, or a model's own (Qwen3: <think>, </think>).
    tag_strings: Tags = PAPER_TAGS
    # Untagged rendering (the `sft` baseline): thinking, this separator, then the answer.
    untagged_separator: str = "\nThe answer is "
    max_length: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _prompt_names_the_tags(self) -> FormatConfig:
        if "system_prompt" not in self.model_fields_set:
            self.__dict__["system_prompt"] = paper_system_prompt(self.tag_strings)
        return self


class LoraSection(_Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # `all-linear`: every linear layer but the output head; or a list of module names.
    target_modules: str | list[str] = "all-linear"


class TrainingConfig(_Section):
    # `lora`: an adapter per stage (over a 4-bit base with quantization nf4); `full`: every
    # weight trains, kept in fp32 (master weights) and computed in `precision`, and stage 2
    # continues from the stage-1 weights (the paper's setting). Each stage saves fp32 weights;
    # `sftkey-lora export --dtype` writes the final model in 16 bits.
    mode: Literal["lora", "full"] = "lora"
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # when set, overrides `epochs`
    batch_size: int = Field(8, gt=0)  # per device
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    # A fraction of the training steps when below 1, else a number of steps.
    warmup: float = Field(0.03, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Optimizer = "adamw_torch"
    max_grad_norm: float = Field(1.0, gt=0)
    # `auto`: bf16 on a GPU that has it, else fp16 on a GPU, else fp32 (CPU).
    precision: Precision = "auto"
    gradient_checkpointing: bool = True
    # Padding-free: the `batch_size` examples of a batch go into one row, attention kept
    # inside each example (no compute spent on padding).
    packing: bool = False
    shuffle: bool = True  # false: examples in file order (a curriculum, or comparable runs)
    seed: int = 0
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(100, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    report_to: list[str] = []  # e.g. [tensorboard, wandb]


class StageConfig(_Section):
    """What one stage trains with: the recipe's `lora` and `training`, with the stage's own
    `stages.NAME.lora` / `stages.NAME.training` keys laid over them."""

    lora: LoraSection = LoraSection()
    training: TrainingConfig = TrainingConfig()


class MergeConfig(_Section):
    # The 16-bit weights the stage-1 adapter is merged into: the original ones, or the NF4
    # round-tripped ones the adapter saw in training; `auto` keeps the one whose re-quantized
    # merge is closer (lower KL) to the stage-1 model on held-out examples.
    base: Literal["auto", "original", "nf4"] = "auto"
    # With a 4-bit base: stage 2 trains over the merged weights quantized to NF4 again (true;
    # the paper's `stage1-merged -> 4-bit -> stage 2`) or over them as merged, in 16 bits
    # (false: no second rounding, the base's memory of a 16-bit model).
    requantize: bool = True


class JudgeConfig(_Section):
    """An OpenAI-compatible chat endpoint (vLLM, TGI, a hosted API) asked the paper's
    Appendix C.2 question: do the two responses give the same answer?"""

    url: str  # the API base, e.g. http://localhost:8000/v1 (…/chat/completions is added)
    model: str  # e.g. meta-llama/Meta-Llama-3-70B-Instruct
    # The name of the environment variable holding the API key: a key never sits in a recipe.
    api_key_env: str = "SFTKEY_JUDGE_API_KEY"
    timeout: float = Field(60, gt=0)  # seconds per request; a timeout falls back to the exact check
    workers: int = Field(4, gt=0)  # requests in flight at once


class EvalConfig(_Section):
    # lm-eval task names from `eval_tasks/`; `auto` is the task of `data.source`; [] skips eval.
    tasks: list[str] | Literal["auto"] = "auto"
    limit: int | None = Field(None, gt=0)  # examples per task (None: the whole test split)
    # A local test file in the source's own schema, used instead of the hub; a jsonl source is
    # evaluated (with `tasks: auto`) only when it is given.
    path: Path | None = None
    alpha: float = Field(0.7, ge=0, le=1)  # score = alpha·acc + (1 − alpha)·fmt
    batch_size: int = Field(16, gt=0)  # prompts generated at once
    max_gen_toks: int | None = Field(None, gt=0)  # None: each task's own limit
    judge: JudgeConfig | None = None  # None: the deterministic check only

    _path_exists = field_validator("path")(lambda value: _existing_file(value))


class Recipe(_Section):
    name: str | None = None
    strategy: Strategy = METHOD
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    format: FormatConfig = FormatConfig()
    lora: LoraSection = LoraSection()
    training: TrainingConfig = TrainingConfig()
    stages: dict[StageName, StageConfig] = {}
    merge: MergeConfig = MergeConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _stages_inherit(cls, raw: Any) -> Any:
        """Each `stages.NAME` section starts from the top-level `lora` and `training`."""
        if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict):
            return raw
        stages = {}
        for name, own in raw["stages"].items():
            if isinstance(own, dict):
                own = {**own, **{section: _laid_over(raw.get(section), own.get(section))
                                 for section in ("lora", "training")}}
            stages[name] = own
        return {**raw, "stages": stages}

    @model_validator(mode="after")
    def _nf4_merge_needs_nf4(self) -> Recipe:
        if self.merge.base == "nf4" and self.model.quantization != "nf4":
            raise ValueError("merge.base: nf4 is the round trip of a 4-bit base; "
                             "it needs model.quantization: nf4")
        return self

    @model_validator(mode="after")
    def _one_mode(self) -> Recipe:
        """The mode is the run's: adapters merge between stages, full weights do not."""
        for name in STAGE_NAMES:
            if self.stage(name).training.mode != self.training.mode:
                raise ValueError(f"stages.{name}.training.mode: every stage trains the same way, and "
                                 f"training.mode is {self.training.mode}; set training.mode instead")
        if self.training.mode == "full" and self.model.quantization != "none":
            raise ValueError("training.mode: full trains every weight of the unquantized model; "
                             "set model.quantization: none")
        return self

    @model_validator(mode="after")
    def _unsloth_trains_adapters(self) -> Recipe:
        if self.model.backend != "unsloth":
            return self
        if self.training.mode == "full":
            raise ValueError("model.backend: unsloth trains LoRA adapters; use training.mode: lora")
        if self.format.tags == "added_tokens":
            raise ValueError("model.backend: unsloth cannot train rows of added tag tokens; "
                             "use format.tags: text")
        return self

    def eval_tasks(self) -> list[str]:
        """The lm-eval tasks run after training. `auto` for a jsonl source without a test file
        (`eval.path`) is none: there is nothing of the user's to evaluate on."""
        if self.eval.tasks != "auto":
            return list(self.eval.tasks)
        if SOURCES[self.data.source].test_split is None and self.eval.path is None:
            return []
        return [task_name(self.data.source)]

    def with_seed(self, seed: int) -> Recipe:
        """The recipe with every stage seeded by `seed` (adapter initialisation, data order and
        the held-out draw); the data, its test split included, stay as they are."""
        def seeded(training: TrainingConfig) -> TrainingConfig:
            return training.model_copy(update={"seed": seed})

        stages = {name: stage.model_copy(update={"training": seeded(stage.training)})
                  for name, stage in self.stages.items()}
        return self.model_copy(update={"training": seeded(self.training), "stages": stages})

    def stage(self, name: str) -> StageConfig:
        """The resolved settings of one stage."""
        return self.stages.get(name) or StageConfig(lora=self.lora, training=self.training)  # type: ignore[arg-type]


def _laid_over(base: Any, own: Any) -> Any:
    """`own` keys over `base` keys when both are mappings; otherwise `own` as given, so that
    validation reports it."""
    if own is None:
        return base if base is not None else {}
    if isinstance(base, dict) and isinstance(own, dict):
        return _deep_merge(base, own)
    return own


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file (and the files it `include`s), apply `dotted.key=value` overrides,
    validate."""
    path = Path(path)
    raw = _read_with_includes(path, ())
    for item in overrides or []:
        apply_override(raw, item)
    raw.setdefault("name", path.stem)
    return validate_recipe(raw, source=str(path))


def _read_with_includes(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """`include: FILE` or a list of them, relative to the including file: their keys first,
    later files over earlier ones, this file's own keys over all (sections merge key by key)."""
    if not path.is_file():
        where = f" (included from {seen[-1]})" if seen else ""
        raise UserError(f"recipe file not found: {path}{where}")
    if path.resolve() in seen:
        raise UserError(f"{path}: includes itself through {' -> '.join(map(str, seen))}")
    raw = _read_yaml(path)
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise UserError(f"{path}: field `include`: expected a file name or a list of them")
    merged: dict[str, Any] = {}
    for name in includes:
        merged = _deep_merge(merged, _read_with_includes(path.parent / name, (*seen, path.resolve())))
    return _deep_merge(merged, raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path}:{line} is not valid YAML ({first_line(err)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    return raw


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, lists...)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected dotted.key=value")
    parts = key.strip().split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or an optional section left unset (eval.judge)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = text


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = first["msg"].removeprefix("Value error, ")
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        where = f"field `{field}`: " if field else ""  # checks across sections name their fields
        raise UserError(f"{source}: {where}{message}{more}") from None

