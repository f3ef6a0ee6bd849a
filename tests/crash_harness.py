"""Kill a reduced quickstart `run` and `compare` with SIGKILL at instants spread over their
wall time and at named crash points (`sftkey_lora/rundir/crashpoints.py`: every passage of a
`run`; of a `compare`, those its runs do not share with a `run`, and the last), rerun the same
command after each kill (some reruns are killed again), and check that what it ends with is
identical to what an uninterrupted command wrote: the final adapters (max |diff| at most
1e-6), `metrics.json`, the samples and `comparison.json`, with no temporary left behind.

    python -m tests.crash_harness [--instants 20] [--compare-instants 8] [--subject run|compare]
                                  [--no-points] [--work DIR]

Prints a table of phase against instant against result; exits 1 if any result differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkey_lora.rundir.crashpoints import CRASH_AT, CRASH_LOG
from sftkey_lora.rundir.layout import CompareLayout, RunLayout
from tests.support import QUICKSTART, ROOT, SMALL, SMALL_EVAL, as_set_flags

TOLERANCE = 1e-6  # max |diff| of adapter weights
# A reduced quickstart (the slow tests' shared run): several checkpoints per stage, a short
# evaluation.
RUN = [*SMALL, *SMALL_EVAL]
COMPARE = [*RUN, "stages.stage1.training.max_steps=4", "stages.stage2.training.max_steps=2"]
# One named point in every phase, each in the rerun after the kill before (the counts are
# per process): stage 1, the merge, stage 2, the evaluation, the report.
RELAY = {"after checkpoint#2": "run: stage1 running", "before stage1-merged#1": "run: merge running",
         "after checkpoint#1": "run: stage2 running", "before samples#1": "run: eval running",
         "after report.md#1": "run: eval running"}
SECOND_KILL_EVERY = 3  # every third instant's rerun is killed too, halfway through what is left


@dataclass(frozen=True)
class Subject:
    """A command the harness kills, and how to read what it leaves."""

    name: str
    argv: Callable[[Path], list[str]]
    runs: Callable[[Path], dict[str, RunLayout]]  # every run directory, by name
    extra_json: tuple[str, ...] = ()  # files of the command's own, compared as JSON

    def phase(self, out: Path) -> str:
        """Where a kill left the command: the first run not finished, its last step recorded
        and whether that step was running or done (the kill fell before the next began)."""
        for name, layout in self.runs(out).items():
            if not layout.run_file.is_file():
                return f"{name}: start"
            steps = json.loads(layout.run_file.read_text())["steps"]
            if steps.get("eval", {}).get("status") != "complete":
                if not steps:
                    return f"{name}: data"
                last, entry = list(steps.items())[-1]
                return f"{name}: {last} {'done' if entry['status'] == 'complete' else 'running'}"
        return "comparison" if self.extra_json else "done"


def run_subject() -> Subject:
    return Subject("run", lambda out: ["run", str(QUICKSTART), "--output", str(out), *as_set_flags(RUN)],
                   lambda out: {"run": RunLayout(out)})


def compare_subject(seeds: str = "0,1") -> Subject:
    from sftkey_lora.comparison import COMPARED

    def runs(out: Path) -> dict[str, RunLayout]:
        layout = CompareLayout(out)
        return {f"seed {seed} {name}": layout.run(name, int(seed)) for seed in seeds.split(",")
                for name in COMPARED}

    return Subject("compare", lambda out: ["compare", str(QUICKSTART), "--output", str(out), "--seeds", seeds,
                                           *as_set_flags(COMPARE)],
                   runs, extra_json=("comparison.json",))


def attempt(subject: Subject, out: Path, kill_after: float | None = None, crash_at: str | None = None,
            crash_log: Path | None = None, argv: list[str] | None = None, cache: Path | None = None
            ) -> tuple[int, float]:
    """The subject's command on `out` (or `argv`, its messages still kept beside `out`) once,
    in a process group of its own, with the encoded-data cache `cache` (default: `cache`
    beside `out`); SIGKILL to the whole group after `kill_after` seconds. (exit code, negative
    for a signal; seconds)."""
    cache = cache or out.parent / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFTKEY_LORA_CACHE": str(cache)}
    env.pop(CRASH_AT, None)
    env.pop(CRASH_LOG, None)
    if crash_at:
        env[CRASH_AT] = crash_at
    if crash_log:
        env[CRASH_LOG] = str(crash_log)
    started = time.perf_counter()
    with (out.parent / f"{out.name}.stderr").open("a") as stderr:
        command = [sys.executable, "-m", "sftkey_lora", *(argv or subject.argv(out))]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, time.perf_counter() - started


def result(subject: Subject, out: Path) -> dict[str, Any]:
    """What must come out the same: each run's final adapter, metrics, samples and logged
    losses (each stage's history, before a kill and after), and the command's own JSON files."""
    from safetensors.torch import load_file

    found: dict[str, Any] = {}
    for name, layout in subject.runs(out).items():
        final = layout.stage_dir("stage2" if (layout.root / "stage2").is_dir() else "stage1")
        found[f"{name} adapter"] = load_file(final / "adapter_model.safetensors")
        found[f"{name} metrics"] = json.loads(layout.metrics_file.read_text())
        steps = json.loads(layout.run_file.read_text())["steps"]
        trained = [stage for stage in ("stage1", "stage2") if stage in steps]
        found[f"{name} losses"] = {stage: logged(steps[stage]["log_history"]) for stage in trained}
        found[f"{name} train_loss"] = {stage: steps[stage]["train_loss"] for stage in trained}
        found[f"{name} samples"] = {path.name: path.read_bytes()
                                    for path in sorted(layout.samples_dir.iterdir())}
    for file in subject.extra_json:
        found[file] = json.loads((out / file).read_text())
    return found


# Wall-time keys, logged with every step and different in every run.
TIMINGS = ("runtime", "per_second")


def logged(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stage's logged steps and probes without their wall times. The Trainer's end-of-training
    summary (the entry with `train_loss`, its mean over the steps this process trained) is left
    out: a stage resumed from its final checkpoint trains nothing and writes none."""
    return [{key: value for key, value in entry.items() if not any(word in key for word in TIMINGS)}
            for entry in history if "train_loss" not in entry]


def adapter_gap(expected: dict[str, Any], got: dict[str, Any]) -> float:
    """The largest |difference| of any adapter weight (infinite where the tensors differ)."""
    gaps = [0.0]
    for key, value in expected.items():
        if key.endswith("adapter"):
            other = got[key]
            if value.keys() != other.keys():
                return float("inf")
            gaps += [(value[name] - other[name]).abs().max().item() for name in value]
    return max(gaps)


def verdict(expected: dict[str, Any], got: dict[str, Any], out: Path) -> str:
    """`identical` (every adapter weight bit for bit, everything else exactly), `identical
    within GAP` (the adapters within TOLERANCE), or what differs, one short phrase each."""
    gap = adapter_gap(expected, got)
    problems = [f"adapters: max |diff| {gap:.2e}"] if gap > TOLERANCE else []
    problems += [f"{key} differ" for key, value in expected.items()
                 if not key.endswith("adapter") and value != got[key]]
    problems += [f"left {name}" for name in leftovers(out)]
    return "; ".join(problems) or ("identical" if gap == 0 else f"identical within {gap:.1e}")


def leftovers(out: Path) -> list[str]:
    """Temporaries and set-aside folders: a finished command leaves none."""
    return sorted(str(path.relative_to(out)) for path in out.rglob(".*")
                  if path.name.endswith((".tmp", ".old")))


def own_cache(out: Path) -> Path:
    """An encoded-data cache for one command's folder alone: each trial starts with none, as
    the reference did, so it passes the cache's crash points where the reference passed them."""
    return out.parent / f"{out.name}.cache"


@dataclass
class Trial:
    subject: str
    at: str  # "12.3 s" or a crash point
    phase: str
    second: str  # where the reruns were killed too, if they were
    outcome: str  # "identical", "identical within GAP" (the adapters), or what differs


class Harness:
    """One uninterrupted reference per subject, then kill after kill, each in a fresh folder."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.trials: list[Trial] = []
        self.count = 0

    def reference(self, subject: Subject) -> tuple[dict[str, Any], float, list[str]]:
        """The uninterrupted command: its result, its wall time and the crash points it passes."""
        out, log = self.work / f"{subject.name}-reference", self.work / f"{subject.name}-points.log"
        code, seconds = attempt(subject, out, crash_log=log, cache=own_cache(out))
        if code != 0:
            raise SystemExit(f"the uninterrupted {subject.name} failed (exit {code}); see {out}.stderr")
        return result(subject, out), seconds, log.read_text().splitlines()

    def trial(self, subject: Subject, expected: dict[str, Any], at: str,
              kills: Sequence[float | str]) -> Trial:
        """The command on a fresh folder killed once per entry of `kills` (after so many
        seconds, or at a named crash point), each kill in the rerun of the one before, then
        run to its end and compared with the uninterrupted result."""
        self.count += 1
        out = self.work / f"{subject.name}-{self.count}"
        phases = []
        for kill in kills:
            timed = isinstance(kill, float)
            code, _ = attempt(subject, out, kill_after=kill if timed else None,
                              crash_at=None if timed else kill, cache=own_cache(out))
            phase = subject.phase(out) if code == -signal.SIGKILL else "finished before the kill"
            phases.append(f"{phase} ({kill:.1f} s in)" if timed and phases else phase)
        code, _ = attempt(subject, out, cache=own_cache(out))
        if code != 0:
            outcome = f"rerun exit {code}: {_last_line(out.parent / f'{out.name}.stderr')}"
        else:
            outcome = verdict(expected, result(subject, out), out)
        trial = Trial(subject.name, at, phases[0], "; ".join(phases[1:]), outcome)
        self.trials.append(trial)
        print(f"{trial.subject:8} {trial.at:34} {trial.phase:28} {trial.second or '-':28} {trial.outcome}",
              flush=True)
        if outcome.startswith("identical"):
            shutil.rmtree(out)
            shutil.rmtree(own_cache(out), ignore_errors=True)
        return trial

    def instants(self, subject: Subject, n: int, expected: dict[str, Any], wall: float) -> None:
        for i in range(n):
            at = wall * (i + 0.5) / n
            again = [(wall - at) / 2] if i % SECOND_KILL_EVERY == SECOND_KILL_EVERY - 1 else []
            self.trial(subject, expected, f"{at:.1f} s", [at, *again])

    def points(self, subject: Subject, expected: dict[str, Any], points: list[str]) -> None:
        for point in points:
            self.trial(subject, expected, point, [point])


def _last_line(file: Path) -> str:
    lines = [line for line in file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:120] if lines else "(no message)"


def compare_passages(points: list[str], run_points: list[str]) -> list[str]:
    """The passages of a comparison worth a kill of their own: the first of each point a
    single `run` never passes, and the last of every point (its last run, every run before it
    finished). The first passages of the others fall in its first run, which is a `run`."""
    own = {_name(point) for point in run_points}
    last = {_name(point): point for point in points}
    chosen = set(last.values())
    chosen |= {point for point in points if point.endswith("#1") and _name(point) not in own}
    return [point for point in points if point in chosen]


def _name(passage: str) -> str:
    return passage.rsplit("#", 1)[0]


def _run_points(harness: Harness) -> list[str]:
    """The points an uninterrupted `run` passes, when the harness was asked not to kill it."""
    log = harness.work / "run-points.log"
    if not log.is_file():
        out = harness.work / "run-points"
        attempt(run_subject(), out, crash_log=log, cache=own_cache(out))
    return log.read_text().splitlines()


def table(trials: list[Trial]) -> str:
    rows = ["| command | killed at | phase | killed again in | result |", "|---|---|---|---|---|"]
    rows += [f"| {t.subject} | {t.at} | {t.phase} | {t.second or '-'} | {t.outcome} |" for t in trials]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instants", type=int, default=20, help="kills spread over `run` (default 20)")
    parser.add_argument("--compare-instants", type=int, default=8,
                        help="kills spread over `compare` (default 8)")
    parser.add_argument("--no-points", action="store_true", help="leave out the named crash points")
    parser.add_argument("--subject", choices=("run", "compare"), default=None,
                        help="kill only this command (default: both)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sftkey-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    harness = Harness(work)
    started = time.perf_counter()
    run_points: list[str] = []
    for subject, n in ((run_subject(), args.instants), (compare_subject(), args.compare_instants)):
        if args.subject not in (None, subject.name):
            continue
        expected, wall, points = harness.reference(subject)
        print(f"{subject.name}: uninterrupted {wall:.1f} s, {len(points)} crash-point passages", flush=True)
        harness.instants(subject, n, expected, wall)
        if args.no_points:
            continue
        if subject.name == "run":
            run_points = points
            harness.points(subject, expected, points)
            harness.trial(subject, expected, "each phase in turn", list(RELAY))
        else:
            harness.points(subject, expected, compare_passages(points, run_points or _run_points(harness)))
    print(f"\n{len(harness.trials)} kills in {time.perf_counter() - started:.0f} s\n")
    print(table(harness.trials))
    failed = [trial for trial in harness.trials if not trial.outcome.startswith("identical")]
    print(f"\n{len(failed)} of {len(harness.trials)} differ" if failed else "\nevery rerun ended identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
