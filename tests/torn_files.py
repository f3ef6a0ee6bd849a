"""Damage each kind of file the kit reads back, one at a time (cut to half its length, zeroed,
garbled in the middle), run the command that reads it, and check that the damage is found:
either what it belonged to is rebuilt and the result is identical to an undamaged run's, or
the command exits 2 with one message naming the file. Prints the catalogue.

    python -m tests.torn_files [--work DIR] [--kinds K1,K2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.crash_harness import attempt, leftovers, result, run_subject, verdict

CHECKPOINT = "after checkpoint#2"  # the killed run: stage 1 stopped once its second checkpoint was whole


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zeroed(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def garbled(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(byte ^ 0xFF for byte in data[middle:middle + 16])
    path.write_bytes(bytes(data))


DAMAGES: dict[str, Callable[[Path], None]] = {"cut": cut, "zeroed": zeroed, "garbled": garbled}


@dataclass(frozen=True)
class Kind:
    """One kind of file: in which prepared folder it lies, and what reads it back."""

    name: str
    source: str  # "finished" run, "killed" run (stage 1's checkpoints), or "export"
    file: Callable[[Path, Path], Path]  # (the copy, the cache folder) -> the file
    reader: str  # "run" (the same command again), or "eval" (of the export or its GGUF)
    expect: str  # REBUILT or REFUSED


def cache_entry(cache: Path) -> Path:
    [entry] = [path for path in cache.iterdir() if not path.name.startswith(".")]
    return entry


def in_run(*parts: str) -> Callable[[Path, Path], Path]:
    return lambda copy, cache: copy.joinpath(*parts)


def in_cache(name: str) -> Callable[[Path, Path], Path]:
    return lambda copy, cache: cache_entry(cache) / name


REBUILT, REFUSED = "rebuilt", "refused"
KINDS = [
    Kind("cache: token ids", "killed", in_cache("input_ids.npy"), "run", REBUILT),
    Kind("cache: row bounds", "killed", in_cache("bounds.npy"), "run", REBUILT),
    Kind("cache: key flags", "killed", in_cache("in_key.npy"), "run", REBUILT),
    Kind("cache: segments", "killed", in_cache("segments.npy"), "run", REBUILT),
    Kind("cache: manifest", "killed", in_cache("sftkey_manifest.json"), "run", REBUILT),
    Kind("checkpoint: adapter weights", "killed", in_run("checkpoint-4", "adapter_model.safetensors"), "run",
         REBUILT),
    Kind("checkpoint: trainer_state.json", "killed", in_run("checkpoint-4", "trainer_state.json"), "run",
         REBUILT),
    Kind("checkpoint: optimizer state", "killed", in_run("checkpoint-4", "optimizer.pt"), "run", REBUILT),
    Kind("checkpoint: scheduler state", "killed", in_run("checkpoint-4", "scheduler.pt"), "run", REBUILT),
    Kind("checkpoint: RNG state", "killed", in_run("checkpoint-4", "rng_state.pth"), "run", REBUILT),
    Kind("checkpoint: training arguments", "killed", in_run("checkpoint-4", "training_args.bin"), "run",
         REBUILT),
    Kind("checkpoint: manifest", "killed", in_run("checkpoint-4", "sftkey_manifest.json"), "run", REBUILT),
    Kind("run.json", "finished", in_run("run.json"), "run", REFUSED),
    Kind("metrics.json", "finished", in_run("metrics.json"), "run", REBUILT),
    Kind("samples", "finished", in_run("samples", "sftkey_synthetic.jsonl"), "run", REBUILT),
    Kind("stage 2: adapter_config.json", "finished", in_run("stage2", "adapter_config.json"), "run", REBUILT),
    Kind("stage 1: adapter weights", "finished", in_run("stage1", "adapter_model.safetensors"), "run",
         REBUILT),
    Kind("stage 1: adapter_config.json", "finished", in_run("stage1", "adapter_config.json"), "run", REBUILT),
    Kind("stage 1: tokenizer", "finished", in_run("stage1", "tokenizer.json"), "run", REBUILT),
    Kind("stage 2: adapter weights", "finished", in_run("stage2", "adapter_model.safetensors"), "run",
         REBUILT),
    Kind("stage 2: manifest", "finished", in_run("stage2", "sftkey_manifest.json"), "run", REBUILT),
    Kind("stage1-merged: weights", "finished", in_run("stage1-merged", "model.safetensors"), "run", REBUILT),
    Kind("stage1-merged: config.json", "finished", in_run("stage1-merged", "config.json"), "run", REBUILT),
    Kind("stage1-merged: tokenizer", "finished", in_run("stage1-merged", "tokenizer.json"), "run", REBUILT),
    Kind("samples: manifest", "finished", in_run("samples", "sftkey_manifest.json"), "run", REBUILT),
    Kind("export: weights", "export", in_run("model.safetensors"), "eval", REFUSED),
    Kind("export: config.json", "export", in_run("config.json"), "eval", REFUSED),
    Kind("export: tokenizer", "export", in_run("tokenizer.json"), "eval", REFUSED),
    Kind("export: recipe", "export", in_run("sftkey_recipe.json"), "eval", REFUSED),
    Kind("export: GGUF", "export", lambda copy, cache: next(copy.glob("*-f16.gguf")), "eval", REFUSED),
]


@dataclass
class Row:
    kind: str
    damage: str
    expected: str
    outcome: str  # what the command did
    holds: bool


class Catalogue:
    """The prepared folders (a finished run, a killed one, an export), each case in a copy."""

    def __init__(self, work: Path) -> None:
        self.work, self.rows = work, []
        self.subject = run_subject()
        self.sources: dict[str, Path] = {}
        self.expected: dict[str, Any] = {}

    def prepare(self, needed: set[str], finished: Path | None = None) -> None:
        """The folders the cases copy; `finished`: an undamaged run made already."""
        self.work.mkdir(parents=True, exist_ok=True)
        if finished is None:
            finished = self.work / "finished"
            code, _ = attempt(self.subject, finished)
            if code != 0:
                raise SystemExit(f"the undamaged run failed (exit {code}); see {finished}.stderr")
        self.expected = result(self.subject, finished)
        self.sources["finished"] = finished
        if "killed" in needed:
            killed = self.work / "killed"
            code, _ = attempt(self.subject, killed, crash_at=CHECKPOINT)
            assert code < 0, f"the run was not killed at {CHECKPOINT}"
            self.sources["killed"] = killed
        if "export" in needed:
            export = self.work / "export"
            code, _ = attempt(self.subject, finished, argv=["export", str(finished), "--output", str(export),
                                                             "--gguf", "f16"])
            if code != 0:
                raise SystemExit(f"the export failed (exit {code}); see {finished}.stderr")
            self.sources["export"] = export

    def case(self, kind: Kind, damage: str) -> Row:
        copy = self.work / f"case-{len(self.rows)}"
        cache = self.work / "cache"
        saved_cache = self.work / "cache-saved"
        shutil.copytree(self.sources[kind.source], copy, symlinks=True)
        if kind.source == "killed":  # the cache as the killed run left it, restored after
            shutil.copytree(cache, saved_cache)
        target = kind.file(copy, cache)
        DAMAGES[damage](target)
        if kind.reader == "run":
            code, _ = attempt(self.subject, copy)
        else:
            evaluated = copy if target.suffix != ".gguf" else target
            out = self.work / f"eval-{len(self.rows)}"
            argv = ["eval", str(evaluated), "--limit", "1", "--output", str(out)]
            code, _ = attempt(self.subject, copy, argv=argv)
        said = _said_about(copy, target)
        if code == 2:
            outcome, holds = f"refused: {said}", kind.expect == REFUSED and target.name in said
        elif code != 0:
            outcome, holds = f"exit {code}: {said}", False
        else:
            if kind.reader == "run":
                found = verdict(self.expected, result(self.subject, copy), copy)
            else:
                found = "; ".join(f"left {name}" for name in leftovers(copy)) or "identical"
            outcome = f"rebuilt ({said}); {found}"
            holds = kind.expect == REBUILT and found.startswith("identical")
        if saved_cache.exists():
            shutil.rmtree(cache)
            saved_cache.rename(cache)
        row = Row(kind.name, damage, kind.expect, outcome, holds)
        self.rows.append(row)
        print(f"{row.kind:32} {row.damage:8} {'holds' if holds else 'FAILS':6} {row.outcome}", flush=True)
        if holds:
            shutil.rmtree(copy)
        return row


def _said_about(copy: Path, target: Path) -> str:
    """The command's message about the damaged file (or, for the cache, that it was rebuilt)."""
    lines = (copy.parent / f"{copy.name}.stderr").read_text(errors="replace").splitlines()
    named = [line.strip() for line in lines if target.name in line or target.parent.name in line]
    return named[-1][:160] if named else "nothing said"


def table(rows: list[Row]) -> str:
    lines = ["| file | damage | expected | what the command did | holds |", "|---|---|---|---|---|"]
    lines += [f"| {r.kind} | {r.damage} | {r.expected} | {r.outcome} | {'yes' if r.holds else 'NO'} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None,
                        help="where the runs go (default: a temporary folder)")
    parser.add_argument("--kinds", default=None, help="comma-separated kinds (default: all)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sftkey-torn-"))
    work.mkdir(parents=True, exist_ok=True)
    kinds = [kind for kind in KINDS if args.kinds is None or kind.name in args.kinds.split(",")]
    catalogue = Catalogue(work)
    started = time.perf_counter()
    catalogue.prepare({kind.source for kind in kinds})
    for kind in kinds:
        for damage in DAMAGES:
            catalogue.case(kind, damage)
    print(f"\n{len(catalogue.rows)} cases in {time.perf_counter() - started:.0f} s\n")
    print(table(catalogue.rows))
    failed = [row for row in catalogue.rows if not row.holds]
    print(f"\n{len(failed)} of {len(catalogue.rows)} do not hold" if failed else "\nevery case holds")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
