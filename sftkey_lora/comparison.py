"""`sftkey-lora compare`: the recipe trained and evaluated with each strategy, side by side.

Every strategy gets its own run directory under the comparison's output (so an
interrupted comparison resumes where it stopped) and the same settings but `strategy`.
The comparison is written in the paper's form: acc, fmt, fmt_tags and score per task and on
average, relative change against `sft` (Table 1), and the held-out key-token loss of every
strategy through training (Figure 3); beside it, the paired differences on the same test
items with their significance (`evaluation.significance`), and `comparison.json` for scripts.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import UserError
from .evaluation.metrics import METRICS
from .evaluation.report import metric_titles, results_table
from .evaluation.significance import (
    LEVEL,
    Pair,
    adjusted,
    compare_samples,
    pairs_table,
    pooled_metrics,
    read_samples,
)
from .output import RESULT, logged_to
from .pipeline import run_recipe
from .plots import plot_key_loss_curves, plot_metric_bars
from .recipe import Recipe
from .rundir.diskfull import disk_full_stops
from .rundir.files import empty_temporary, link_or_copy, replace_dir, write_json_atomic, write_text_atomic
from .rundir.layout import EVAL_STEP, CompareLayout
from .rundir.lock import holding
from .rundir.outcomes import EvalOutcome, StageOutcome
from .rundir.record import RunRecord
from .strategies import BASELINE, METHOD, METHOD_STAGE1, STAGE_NAMES, STRATEGIES
from .train.plan import plan_run, shares_first_stage

COMPARED = tuple(STRATEGIES)  # every strategy, the baseline first
# Every strategy against the baseline, and the method against its stage 1 alone (stage 2's effect).
PAIRS = [(name, BASELINE) for name in COMPARED if name != BASELINE] + [(METHOD, METHOD_STAGE1)]
log = logging.getLogger(__name__)


def compare(recipe: Recipe, out_dir: Path, fresh: bool = False, seeds: list[int] | None = None
            ) -> dict[str, Any]:
    """Run every strategy (once per seed, where `seeds` are given; skipping what is already
    complete) and write the comparison; its messages also go to `compare.log` there."""
    if not recipe.eval_tasks():
        raise UserError("eval.tasks: a comparison is made of evaluations; give the tasks to evaluate on "
                        "(and eval.path for a jsonl source)")
    layout = CompareLayout(out_dir)
    with holding(layout.claim), logged_to(layout.log_file), disk_full_stops("compare", out_dir):
        return _compare(recipe, layout, fresh, seeds)


def _compare(recipe: Recipe, layout: CompareLayout, fresh: bool, seeds: list[int] | None) -> dict[str, Any]:
    records: dict[str, list[RunRecord]] = {name: [] for name in COMPARED}
    seconds = dict.fromkeys(COMPARED, 0.0)
    for seed in seeds or [None]:
        seeded = recipe if seed is None else recipe.with_seed(seed)
        for strategy in COMPARED:
            log.info(f"== {strategy}" + ("" if seed is None else f", seed {seed}"))
            started = time.perf_counter()
            run_fresh = fresh
            if strategy == METHOD:
                _share_stage1(seeded, layout, seed, fresh)
                run_fresh = False  # emptied by the sharing, where --fresh asked for it
            records[strategy].append(run_recipe(seeded.model_copy(update={"strategy": strategy}),
                                                layout.run(strategy, seed).root, fresh=run_fresh))
            seconds[strategy] += time.perf_counter() - started
    samples = {name: {task: [read_samples(record.layout.samples_file(task)) for record in runs]
                      for task in _tasks(runs[0])} for name, runs in records.items()}
    results = {name: {task: pooled_metrics(task, name, runs) for task, runs in by_task.items()}
               for name, by_task in samples.items()}
    curves = {name: mean_curve([key_loss_history(record) for record in runs])
              for name, runs in records.items()}
    pairs = adjusted([compare_samples(a, b, task, samples[a][task], samples[b][task])
                      for a, b in PAIRS for task in samples[BASELINE]])
    plot_metric_bars(results, METRICS, layout.bars_plot)
    plot_key_loss_curves(curves, layout.key_loss_plot)
    report = comparison_markdown(recipe, results, curves, seconds, layout, pairs, seeds)
    write_json_atomic(layout.json_file, {"seeds": seeds or [recipe.training.seed], "strategies": results,
                                         "pairs": [pair.record() for pair in pairs]})
    write_text_atomic(layout.report_file, report)
    log.log(RESULT, report)
    return results


def _share_stage1(seeded: Recipe, layout: CompareLayout, seed: int | None, fresh: bool) -> None:
    """`sftkey_tag`'s stage 1 is `sft_tag`'s whole training with the same seed and settings:
    its output (hard links, else a copy), loss plot and record go into the method's run, so the
    comparison trains it once and `sftkey_tag − sft_tag` is exactly the merge and stage 2."""
    source, target = layout.run(METHOD_STAGE1, seed), layout.run(METHOD, seed)
    method = seeded.model_copy(update={"strategy": METHOD})
    with holding(target.claim):
        record = RunRecord.open(target, method, fresh)
        trained = RunRecord.read(source).outcome("stage1", StageOutcome)
        alone = plan_run(seeded.model_copy(update={"strategy": METHOD_STAGE1}), source)
        if (record.status("stage1") == "complete" or trained is None
                or not shares_first_stage(alone, plan_run(method, target))):
            return
        tmp = empty_temporary(target.stage_dir("stage1"))
        shutil.copytree(source.stage_dir("stage1"), tmp, copy_function=link_or_copy)
        replace_dir(tmp, target.stage_dir("stage1"))
        if source.stage_plot("stage1").is_file():
            target.plots_dir.mkdir(exist_ok=True)
            shutil.copyfile(source.stage_plot("stage1"), target.stage_plot("stage1"))
        record.complete("stage1", trained.model_copy(update={"shared_from": str(source.stage_dir("stage1"))}))
    log.info(f"{target.root}: stage1 is {source.stage_dir('stage1')}, trained once "
             f"({trained.seconds:.0f} s not spent again)")


def _tasks(record: RunRecord) -> list[str]:
    """The tasks a run was evaluated on (groups left out: their average is the tasks' mean)."""
    outcome = record.outcome(EVAL_STEP, EvalOutcome)
    if outcome is None:
        raise UserError(f"{record.layout.root}: not evaluated; run the comparison again")
    return [task for task, values in outcome.metrics.items() if "tasks" not in values]


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The seeds' held-out key-loss curves averaged step by step (they log at the same steps);
    the first seed's alone where they do not."""
    steps = [[step for step, _ in curve] for curve in curves]
    if any(found != steps[0] for found in steps):
        return curves[0]
    return [(step, sum(curve[i][1] for curve in curves) / len(curves)) for i, step in enumerate(steps[0])]


def key_loss_history(record: RunRecord) -> list[tuple[int, float]]:
    """(step, held-out key loss) through every stage, later stages' steps following earlier ones."""
    points: list[tuple[int, float]] = []
    offset = 0
    for name in STAGE_NAMES:
        outcome = record.outcome(name, StageOutcome)
        curve = outcome.key_loss_curve() if outcome else []
        points += [(step + offset, loss) for step, loss in curve]
        offset = points[-1][0] if points else offset
    return points


def comparison_markdown(recipe: Recipe, results: dict[str, dict[str, Any]],
                        curves: dict[str, list[tuple[int, float]]], seconds: dict[str, float],
                        layout: CompareLayout, pairs: list[Pair], seeds: list[int] | None) -> str:
    over = (f"Each figure is the mean over {len(seeds)} training seeds ({', '.join(map(str, seeds))}) "
            "± its standard error over the test items, and [sd] its standard deviation over the seeds."
            if seeds else "Each figure ± its standard error over the test items.")
    parts = [f"# {recipe.name}: strategies compared", "",
             f"Each strategy trained with the recipe's settings on `{recipe.model.name_or_path}` and "
             f"evaluated greedily. {over} Relative change against `{BASELINE}` in parentheses.", ""]
    for metric, title in metric_titles(recipe.eval.alpha):
        parts += [f"## {title}", "", results_table(results, metric, BASELINE), ""]
    test = ("exact McNemar p-value on acc" if not seeds else
            "exact sign-flip permutation p-value on acc of the per-item means over the seeds "
            "(McNemar's for one seed)")
    parts += ["## Paired differences", "",
              f"On the same test items: {test}, Holm-adjusted over the {len(pairs)} pairs below; "
              f"paired-bootstrap 95% intervals over the items. The verdict is on acc at adjusted "
              f"p < {LEVEL}. `{METHOD}` − `{METHOD_STAGE1}` is stage 2's effect.",
              "", pairs_table(pairs), ""]
    parts += ["## Held-out key-token loss", "",
              f"Key tokens follow `{recipe.format.tag_strings.think_close}`; for the untagged `sft`, "
              "the separator and the answer."
              + (" Means over the seeds." if seeds else ""),
              "", "| | start | end | this command's wall time |", "|---|---:|---:|---:|"]
    for name, history in curves.items():
        start, end = (history[0][1], history[-1][1]) if history else (float("nan"),) * 2
        parts.append(f"| {name} | {start:.3f} | {end:.3f} | {seconds[name]:.0f} s |")
    parts += ["", f"![acc, fmt and score]({layout.bars_plot.name})", "",
              f"![key-token loss]({layout.key_loss_plot.name})", ""]
    return "\n".join(parts)
