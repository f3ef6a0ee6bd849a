"""`sftkey-lora compare`: the recipe trained and evaluated with each strategy, side by side.

Every strategy gets its own run directory under the comparison's output (so an
interrupted comparison resumes where it stopped) and the same settings but `strategy`.
The comparison is written in the paper's form: acc, fmt and score per task and on
average, relative change against `sft` (Table 1), and the held-out key-token loss of every
strategy through training (Figure 3).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .callbacks import KEY_KEY
from .errors import UserError
from .evaluation.report import results_table
from .evaluation.runner import EVAL_STEP
from .plots import plot_key_loss_curves, plot_metric_bars
from .recipe import Recipe
from .run import run_recipe
from .rundir import RunRecord, write_text_atomic

COMPARED = ("sft", "sft_tag", "key_tag", "sftkey_tag")
BASELINE = "sft"
REPORT_FILE = "comparison.md"


def compare(recipe: Recipe, out_dir: Path, fresh: bool = False,
            say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> dict[str, Any]:
    """Run every strategy (skipping what is already complete) and write the comparison."""
    if not recipe.eval_tasks():
        raise UserError("eval.tasks: a comparison is made of evaluations; give the tasks to evaluate on "
                        "(and eval.path for a jsonl source)")
    records: dict[str, RunRecord] = {}
    seconds: dict[str, float] = {}
    for strategy in COMPARED:
        say(f"== {strategy}")
        started = time.perf_counter()
        records[strategy] = run_recipe(recipe.model_copy(update={"strategy": strategy}), out_dir / strategy,
                                       fresh=fresh, say=say)
        seconds[strategy] = time.perf_counter() - started
    results = {name: record.data["steps"][EVAL_STEP]["metrics"] for name, record in records.items()}
    plot_metric_bars(results, out_dir / "comparison.png")
    plot_key_loss_curves({name: key_loss_history(record) for name, record in records.items()},
                         out_dir / "key_loss.png")
    report = comparison_markdown(recipe, results, records, seconds)
    write_text_atomic(out_dir / REPORT_FILE, report)
    say(report)
    return results


def key_loss_history(record: RunRecord) -> list[dict[str, Any]]:
    """The held-out key loss through every stage, later stages' steps following earlier ones."""
    points: list[dict[str, Any]] = []
    offset = 0
    for name, step in record.data["steps"].items():
        history = [entry for entry in step.get("log_history", []) if KEY_KEY in entry]
        if not name.startswith("stage") or not history:
            continue
        points += [{"step": entry["step"] + offset, KEY_KEY: entry[KEY_KEY]} for entry in history]
        offset = points[-1]["step"]
    return points


def comparison_markdown(recipe: Recipe, results: dict[str, dict[str, Any]], records: dict[str, RunRecord],
                        seconds: dict[str, float]) -> str:
    alpha = recipe.eval.alpha
    parts = [f"# {recipe.name}: strategies compared", "",
             f"Each strategy trained with the recipe's settings on `{recipe.model.name_or_path}` and "
             f"evaluated greedily. Relative change against `{BASELINE}` in parentheses.", ""]
    for metric, title in (("score", f"Score ({alpha:g}·acc + {1 - alpha:g}·fmt)"), ("acc", "Accuracy"),
                          ("fmt", "Format adherence")):
        parts += [f"## {title}", "", results_table(results, metric, BASELINE), ""]
    parts += ["## Held-out key-token loss", "",
              "Key tokens follow `</Thinking>`; for the untagged `sft`, the separator and the answer.",
              "", "| | start | end | this command's wall time |",
              "|---|---:|---:|---:|"]
    for name, record in records.items():
        history = key_loss_history(record)
        start, end = (history[0][KEY_KEY], history[-1][KEY_KEY]) if history else (float("nan"),) * 2
        parts.append(f"| {name} | {start:.3f} | {end:.3f} | {seconds[name]:.0f} s |")
    parts += ["", "![acc, fmt and score](comparison.png)", "", "![key-token loss](key_loss.png)", ""]
    return "\n".join(parts)
