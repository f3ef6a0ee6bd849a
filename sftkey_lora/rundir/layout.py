"""Where everything of a run lives: every file and folder name, every step name, in one place.

A run directory (`sftkey-lora run`), an evaluation of a model outside a run (`sftkey-lora
eval MODEL`) and a comparison (`sftkey-lora compare`) are laid out here and nowhere else.
Nothing here imports torch or transformers, so reports and plots stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..strategies import STAGE_NAMES

# Step names as `run.json` records them: the stages, then these two.
MERGE_STEP = "merge"
EVAL_STEP = "eval"
# Keys of the held-out losses in each stage's `log_history`.
THINKING_LOSS, KEY_LOSS = "heldout_thinking_loss", "heldout_key_loss"
CHECKPOINT_PREFIX = "checkpoint-"
MERGED_DIR = "stage1-merged"
EXPORTED_RECIPE = "sftkey_recipe.json"  # in an export: the run's recipe, so its prompts can be rendered
LOCK_NAME, OWNER_NAME = "run.lock", "run.lock.json"  # kept by --fresh: they belong to the run now writing


RUN_FILE, EVALUATION_FILE, COMPARE_LOG = "run.json", "evaluation.json", "compare.log"


def temporary(path: Path, tag: str = "") -> Path:
    """The name a file or folder is written under before it is renamed into place."""
    return path.with_name(f".{path.name}{f'.{tag}' if tag else ''}.tmp")


def is_temporary(path: Path) -> bool:
    """Named as `temporary` names: written by the kit and not yet renamed into place."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


@dataclass(frozen=True)
class Claim:
    """A directory one command writes and holds while it does (`rundir.lock`): the file that
    says a directory is of its kind, and where the lock lies."""

    root: Path
    marker: str  # run.json of a run, evaluation.json of an evaluation, compare.log of a comparison
    beside: bool = False  # the lock lies beside `root`, which is replaced whole (an export)

    @property
    def lock_file(self) -> Path:
        """Held (an OS file lock) by the process that writes the directory; free once it ends."""
        return self._lock_path(LOCK_NAME)

    @property
    def owner_file(self) -> Path:
        """Who holds the lock: what a refused second command names."""
        return self._lock_path(OWNER_NAME)

    def _lock_path(self, name: str) -> Path:
        return self.root.with_name(f".{self.root.name}.{name}") if self.beside else self.root / name


@dataclass(frozen=True)
class RunLayout:
    """A run directory; an evaluation-only directory uses the evaluation part of it."""

    root: Path

    @property
    def claim(self) -> Claim:
        """The run as `run` holds it; `evaluation_claim` for an evaluation outside a run."""
        return Claim(self.root, RUN_FILE)

    @property
    def evaluation_claim(self) -> Claim:
        return Claim(self.root, EVALUATION_FILE)

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def evaluation_file(self) -> Path:
        """An evaluation of a model outside a run: which model, so another is never written over it."""
        return self.root / EVALUATION_FILE

    @property
    def log_file(self) -> Path:
        """Every message of the commands that wrote the run, appended run after run."""
        return self.root / "run.log"

    @property
    def lock_file(self) -> Path:
        return self.claim.lock_file

    @property
    def owner_file(self) -> Path:
        return self.claim.owner_file

    def stage_dir(self, stage: str) -> Path:
        """A stage's adapter (or, in full mode, its whole model), with its tokenizer."""
        if stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {stage!r}")
        return self.root / stage

    @property
    def merged_dir(self) -> Path:
        """The stage-1 adapter merged into 16-bit weights: the base of stage 2."""
        return self.root / MERGED_DIR

    @property
    def export_dir(self) -> Path:
        """`sftkey-lora export`'s default output: the final model as one plain model directory."""
        return self.root / "final"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    def samples_file(self, task: str) -> Path:
        return self.samples_dir / f"{task}.jsonl"

    @property
    def report_file(self) -> Path:
        return self.root / "report.md"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    def tensorboard_dir(self, stage: str) -> Path:
        """A stage's TensorBoard events (`tensorboard --logdir` the run, or a comparison)."""
        return self.root / "tensorboard" / stage

    def stage_plot(self, stage: str) -> Path:
        return self.plots_dir / f"{stage}_loss.png"

    @property
    def eval_plot(self) -> Path:
        return self.plots_dir / "eval_metrics.png"

    def checkpoint(self, step: int) -> Path:
        return self.root / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoints(self) -> list[Path]:
        """The Trainer's `checkpoint-N/` folders, by step."""
        found = [path for path in self.root.glob(f"{CHECKPOINT_PREFIX}*")
                 if path.is_dir() and path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
        return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


@dataclass(frozen=True)
class CompareLayout:
    """A comparison: one run directory per strategy (per seed, under `seed-N/`, where the
    comparison has several), and the comparison's own files."""

    root: Path

    @property
    def claim(self) -> Claim:
        return Claim(self.root, COMPARE_LOG)

    def run(self, strategy: str, seed: int | None = None) -> RunLayout:
        return RunLayout(self.root / strategy if seed is None else self.root / f"seed-{seed}" / strategy)

    @property
    def report_file(self) -> Path:
        return self.root / "comparison.md"

    @property
    def json_file(self) -> Path:
        """The comparison's figures for scripts: every strategy's metrics and the pairs."""
        return self.root / "comparison.json"

    @property
    def log_file(self) -> Path:
        """The comparison's messages (each run's are also in its own run.log), from its first moment."""
        return self.root / COMPARE_LOG

    @property
    def bars_plot(self) -> Path:
        return self.root / "comparison.png"

    @property
    def key_loss_plot(self) -> Path:
        return self.root / "key_loss.png"
