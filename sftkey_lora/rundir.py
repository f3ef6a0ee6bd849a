"""The run directory and its `run.json`: what ran, with what, and how far it got.

`run.json` is rewritten atomically (temporary file, then rename) after every change, and
a step is marked `complete` only once its artifacts are whole on disk, so a run killed at
any moment is resumed by running the same command again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .distributed import is_main, wait_for_everyone, world_size
from .errors import UserError, first_line
from .hardware import device_summary
from .recipe import Recipe, apply_override, validate_recipe

RUN_FILE = "run.json"
CHECKPOINT_PREFIX = "checkpoint-"
EVAL_ONLY_SECTIONS = ("eval",)
PACKAGES = ("sftkey-lora", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")


@dataclass
class RunRecord:
    run_dir: Path
    data: dict[str, Any]

    @classmethod
    def open(cls, run_dir: Path, recipe: Recipe, fresh: bool) -> RunRecord:
        """The record of `run_dir`: resumed if it holds this recipe's run, new if empty. With
        several processes the main one writes it and the others read it."""
        file = run_dir / RUN_FILE
        resolved = recipe.model_dump(mode="json")
        _refuse_other_contents(run_dir, resolved, fresh)  # every process alike: nothing written yet
        if is_main():
            if fresh and file.exists():
                shutil.rmtree(run_dir)
            if file.exists():
                record = cls(run_dir, _read(file))
                record.update(recipe=resolved)  # evaluation settings may change between runs
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                record = cls(run_dir, {
                    "recipe": resolved, "versions": package_versions(), "git_commit": git_commit(),
                    "device": device_summary(), "world_size": world_size(), "created": _now(), "steps": {},
                })
                record.save()
        wait_for_everyone()
        return record if is_main() else cls(run_dir, _read(file))

    def status(self, step: str) -> str:
        return self.data["steps"].get(step, {}).get("status", "pending")

    def update_step(self, step: str, **fields: Any) -> None:
        self.data["steps"].setdefault(step, {}).update(fields)
        self.save()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        if is_main():
            write_json_atomic(self.run_dir / RUN_FILE, self.data)


def _refuse_other_contents(run_dir: Path, resolved: dict[str, Any], fresh: bool) -> None:
    """A directory that is neither empty, nor new, nor a run of this recipe is never written into."""
    file = run_dir / RUN_FILE
    if run_dir.exists() and not file.exists() and any(run_dir.iterdir()):
        raise UserError(f"--output {run_dir}: the directory is not empty and holds no {RUN_FILE}; "
                        "choose an empty or new directory")
    if file.exists() and not fresh:
        trained = _training_part(_read(file).get("recipe") or {})
        if trained != _training_part(resolved):
            keys = ", ".join(_differences(trained, _training_part(resolved))) or "its layout"
            raise UserError(f"{file}: this run directory holds a run of another recipe (differs in "
                            f"{keys}); rerun with --fresh to start over, or choose another --output")


def recorded_recipe(run_dir: Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe a run directory was trained with, with `dotted.key=value` overrides."""
    file = run_dir / RUN_FILE
    raw = _read(file).get("recipe")
    if not isinstance(raw, dict):
        raise UserError(f"{file}: holds no recipe; rerun with --fresh to start over")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(file))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place. An earlier `final` is moved aside first and
    deleted last, so a kill at any moment leaves a whole `final` or a whole `tmp`."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def checkpoints(run_dir: Path) -> list[Path]:
    """The Trainer's `checkpoint-N/` folders, by step."""
    found = [path for path in run_dir.glob(f"{CHECKPOINT_PREFIX}*")
             if path.is_dir() and path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
    return sorted(found, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)))


def is_whole(checkpoint: Path) -> bool:
    """The Trainer writes `trainer_state.json` last: a checkpoint without a readable one was
    cut short (killed, disk full) while it was being saved."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("global_step") == int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def remove_partial_checkpoints(run_dir: Path) -> list[str]:
    """Delete checkpoints that were cut short, so that a resume takes the last whole one."""
    partial = [path for path in checkpoints(run_dir) if not is_whole(path)]
    for path in partial:
        shutil.rmtree(path)
    return [path.name for path in partial]


def last_whole_checkpoint(run_dir: Path) -> Path | None:
    whole = [path for path in checkpoints(run_dir) if is_whole(path)]
    return whole[-1] if whole else None


def remove_checkpoints(run_dir: Path) -> None:
    """Delete the Trainer's `checkpoint-N/` folders, once their stage is complete."""
    for path in checkpoints(run_dir):
        shutil.rmtree(path)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the package's checkout, when it is installed from one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _read(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{file}: unreadable ({first_line(err)}); rerun with --fresh to start over") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
        raise UserError(f"{file}: not a run record; rerun with --fresh to start over")
    return data


def _training_part(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe without the sections that do not change what is trained."""
    return {key: value for key, value in recipe.items() if key not in EVAL_ONLY_SECTIONS}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
