"""`run.json`: what ran, with what, and how far it got.

It is rewritten atomically after every change, and a step is marked `complete` only once
its artifacts are whole on disk, so a run killed at any moment is resumed by running the
same command again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UserError, first_line
from ..recipe import Recipe, apply_override, validate_recipe
from ..runtime.distributed import is_main, main_decides, wait_for_everyone, world_size
from ..runtime.hardware import device_summary
from .files import empty_run_dir, write_json_atomic
from .layout import RunLayout
from .lock import refuse_foreign
from .outcomes import Outcome

T = TypeVar("T", bound=Outcome)

EVAL_ONLY_SECTIONS = ("eval",)  # recipe sections that change nothing that was trained
CHECKSUM = "checksum"  # of the rest of run.json, so a change since it was written is found
PACKAGES = ("sftkey-lora", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")


@dataclass
class RunRecord:
    layout: RunLayout
    data: dict[str, Any]

    @classmethod
    def open(cls, layout: RunLayout, recipe: Recipe, fresh: bool) -> RunRecord:
        """The record of a run directory: resumed if it holds this recipe's run, new if empty.
        With several processes the main one writes it and the others read it."""
        file = layout.run_file
        resolved = recipe.model_dump(mode="json")
        main_decides(lambda: _refuse_other_contents(layout, resolved, fresh))  # nothing written yet
        if is_main():
            if fresh and file.exists():
                empty_run_dir(layout)
            if file.exists():
                record = cls(layout, _read(file))
                record.update(recipe=resolved)  # evaluation settings may change between runs
            else:
                layout.root.mkdir(parents=True, exist_ok=True)
                record = cls(layout, {
                    "recipe": resolved, "versions": package_versions(), "git_commit": git_commit(),
                    "device": device_summary(), "world_size": world_size(), "created": _now(), "steps": {},
                })
                record.save()
        wait_for_everyone()
        return record if is_main() else cls(layout, _read(file))

    @classmethod
    def read(cls, layout: RunLayout) -> RunRecord:
        """The record of an existing run, to read (export, reports): nothing is written."""
        return cls(layout, _read(layout.run_file))

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return self.data["steps"]

    def status(self, step: str) -> str:
        return self.steps.get(step, {}).get("status", "pending")

    def start(self, step: str, **fields: Any) -> None:
        self.steps[step] = {"status": "running", "started": _now(), **fields}
        self.save()

    def complete(self, step: str, outcome: Outcome) -> None:
        started = self.steps.get(step, {}).get("started")
        self.steps[step] = {"status": "complete", "started": started, **outcome.model_dump(mode="json")}
        self.save()

    def forget(self, steps: list[str]) -> None:
        """Steps to be done again (their output was damaged): as if they had never run."""
        for step in steps:
            self.steps.pop(step, None)
        self.save()

    def outcome(self, step: str, kind: type[T]) -> T | None:
        """What a complete step recorded, read as `kind`; None while it is not complete."""
        if self.status(step) != "complete":
            return None
        return kind.model_validate(self.steps[step])

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        if is_main():
            write_json_atomic(self.layout.run_file, {**self.data, CHECKSUM: _checksum(self.data)})


def _refuse_other_contents(layout: RunLayout, resolved: dict[str, Any], fresh: bool) -> None:
    """A directory that is neither empty, nor new, nor a run of this recipe is never written into."""
    file = layout.run_file
    refuse_foreign(layout.claim)
    if file.exists() and not fresh:
        trained = _training_part(_as_read_now(_read(file).get("recipe") or {}))
        if trained != _training_part(resolved):
            keys = ", ".join(_differences(trained, _training_part(resolved))) or "its layout"
            raise UserError(f"{file}: this run directory holds a run of another recipe (differs in "
                            f"{keys}); rerun with --fresh to start over, or choose another --output")


def is_run(folder: Path) -> bool:
    return RunLayout(folder).run_file.is_file()


def recorded_recipe(layout: RunLayout, overrides: list[str] | None = None) -> Recipe:
    """The recipe a run directory was trained with, with `dotted.key=value` overrides."""
    file = layout.run_file
    raw = _read(file).get("recipe")
    if not isinstance(raw, dict):
        raise UserError(f"{file}: holds no recipe; rerun with --fresh to start over")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(file))


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
    recorded = data.pop(CHECKSUM, None)  # none in a record written before checksums were
    if recorded is not None and recorded != _checksum(data):
        raise UserError(f"{file}: changed since it was written (its checksum does not match); restore "
                        "it, or rerun with --fresh to start over")
    return data


def _checksum(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _as_read_now(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded recipe as this version reads it: a key added since the run was recorded takes
    its default, so a run started before an upgrade still resumes (one that no longer
    validates is compared as it was written)."""
    try:
        return Recipe.model_validate(recorded).model_dump(mode="json")
    except ValueError:
        return recorded


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
