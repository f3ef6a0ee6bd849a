"""Run the `sftkey_*` lm-eval tasks on a loaded model and write what they measured.

The model is passed to lm-eval already loaded (`HFLM(pretrained=model, tokenizer=tok)`):
a 4-bit base with its adapter cannot be described by `model_args` since transformers 5. A GGUF
file is passed as an lm-eval model that runs it through llama.cpp (`gguf.lm`).
Writes `metrics.json` ({task: {acc, fmt, score, …}}) and `samples/<task>.jsonl`
(lm-eval's per-sample records, plus the answer as extracted and the judge's verdict).
"""

from __future__ import annotations

import json
import logging
import statistics
import sysconfig
import time
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..output import RESULT, bars_disabled, route_library_logs
from ..recipe import EvalConfig
from ..rundir.crashpoints import renamed
from ..rundir.files import empty_temporary, json_text, replace_dir
from ..rundir.layout import RunLayout, temporary
from ..rundir.manifest import damaged, write_manifest
from .judge import Case, check_reachable, judge_all
from .metrics import METRICS, score
from .significance import combined_error, standard_error
from .tasks import grade_document

log = logging.getLogger(__name__)

# ./eval_tasks of a checkout, else the copy a wheel installs under <prefix>/share.
TASKS_DIRS = (Path(__file__).resolve().parents[2] / "eval_tasks",
              Path(sysconfig.get_path("data")) / "share" / "sftkey-lora" / "eval_tasks")


def tasks_dir() -> Path:
    """Where the sftkey_* task definitions are (lm_eval's --include_path)."""
    for folder in TASKS_DIRS:
        if (folder / "_sftkey_template_yaml").is_file():
            return folder
    raise UserError(f"eval: the task definitions are in none of {', '.join(map(str, TASKS_DIRS))}; "
                    "reinstall sftkey-lora")


def task_manager(metadata: dict[str, Any], tasks: list[str]):
    """lm-eval's index of `tasks`: ours alone where they are all ours, since indexing lm-eval's
    own 14,690 tasks takes seconds (5-8 on a CPU here) for every evaluation."""
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata=metadata)
    if all(task in ours.all_tasks for task in tasks):
        return ours
    return TaskManager(include_path=str(tasks_dir()), metadata=metadata)


def hf_lm(model: Any, tokenizer: Any, cfg: EvalConfig) -> Any:
    """lm-eval's Hugging Face model over a loaded model, in the evaluation's batches."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    if bars_disabled():  # lm-eval draws its generation bar unless told per call
        lm.generate_until = partial(lm.generate_until, disable_tqdm=True)
    return lm


def evaluate(lm: Any, tasks: list[str], cfg: EvalConfig, metadata: dict[str, Any],
             out: RunLayout, limit: int | None = None) -> dict[str, Any]:
    """Generate with the lm-eval model `lm`, grade (and judge), then write metrics.json and
    samples/; returns the metrics."""
    from lm_eval import simple_evaluate

    route_library_logs()

    manager = task_manager({**metadata, "alpha": cfg.alpha}, tasks)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        known = sorted(name for name in manager.all_tasks if name.startswith("sftkey"))
        raise UserError(f"eval.tasks: unknown task {', '.join(unknown)} (ours: {', '.join(known)})")
    if cfg.judge is not None:
        check_reachable(cfg.judge)
    started = time.perf_counter()
    output = simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=True,
        gen_kwargs={"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None,
    )
    metrics: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for task, records in output["samples"].items():
        samples[task], metrics[task] = grade_samples(records, cfg)
        figures = metrics[task]
        log.log(RESULT, f"{task}: acc {figures['acc']:.3f}  fmt {figures['fmt']:.3f}  "
                        f"score {figures['score']:.3f}  (n={figures['n']})")
    metrics.update(group_means(metrics, output.get("group_subtasks", {})))
    _write(out, metrics, samples)
    log.log(RESULT, f"evaluated {', '.join(tasks)} in {time.perf_counter() - started:.0f} s")
    return metrics


def group_means(metrics: dict[str, Any], groups: dict[str, list[str]]) -> dict[str, Any]:
    """Each group's acc, fmt and score: the mean over its tasks, each weighing the same (as the
    paper's averages), computed after the judge so that its verdicts count."""
    def error(task: str, name: str) -> float:
        return metrics[task].get(f"{name}_se", float("nan"))

    return {group: {**{name: statistics.fmean(metrics[task][name] for task in tasks) for name in METRICS},
                    **{f"{name}_se": combined_error([error(task, name) for task in tasks])
                       for name in METRICS},
                    "tasks": list(tasks)}
            for group, tasks in groups.items() if tasks and all(task in metrics for task in tasks)}


def grade_samples(records: list[dict[str, Any]], cfg: EvalConfig
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-sample rows and the task's means; the judge's verdict, where it gives one, is acc."""
    rows = []
    for record in records:
        doc, output = record["doc"], record["resps"][0][0]
        graded = grade_document(doc, output)
        rows.append({**record, "output": output, "extracted": graded.extracted, "acc_exact": record["acc"]})
    judged: dict[str, Any] = {}
    if cfg.judge is not None and rows:
        cases = [Case(row["doc"]["question"], row["doc"]["reference"], row["output"]) for row in rows]
        verdicts, judged = judge_all(cfg.judge, cases)
        failed = len(rows) - judged["yes"] - judged["no"]
        if failed:
            log.warning(f"judge: {failed} of {len(rows)} samples without a verdict {judged}; "
                "they keep the exact check")
        for row, verdict in zip(rows, verdicts, strict=True):
            row["judge"] = verdict
            if verdict is not None:
                row["acc"] = float(verdict)
                row["score"] = score(row["acc"], row["fmt"], cfg.alpha)
    means = {name: statistics.fmean(row[name] for row in rows) if rows else 0.0 for name in METRICS}
    means.update({f"{name}_se": standard_error([row[name] for row in rows]) for name in METRICS})
    means["acc_exact"] = statistics.fmean(row["acc_exact"] for row in rows) if rows else 0.0
    return rows, {**means, "n": len(rows), "alpha": cfg.alpha, **({"judge": judged} if judged else {})}


def _write(out: RunLayout, metrics: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> None:
    """Samples and metrics as one unit: both are written in full under temporary names first
    (a full disk stops there, the earlier evaluation untouched); then metrics.json goes and
    comes back last, so a metrics.json always has its own samples beside it."""
    out.root.mkdir(parents=True, exist_ok=True)
    tmp = empty_temporary(out.samples_dir)
    tmp.mkdir()
    for task, rows in samples.items():
        with (tmp / out.samples_file(task).name).open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    write_manifest(tmp)
    metrics_tmp = temporary(out.metrics_file)
    metrics_tmp.write_text(json_text(metrics), encoding="utf-8")
    out.metrics_file.unlink(missing_ok=True)
    replace_dir(tmp, out.samples_dir)
    renamed(metrics_tmp, out.metrics_file)


def damaged_evaluation(out: RunLayout, metrics: dict[str, Any]) -> Path | None:
    """The first file of a recorded evaluation changed since it was written (samples against
    their manifest, metrics.json against the metrics recorded in run.json); None if whole."""
    broken = damaged(out.samples_dir) if out.samples_dir.is_dir() else ["."]
    if broken:
        return out.samples_dir / broken[0]
    try:
        whole = json.loads(out.metrics_file.read_text(encoding="utf-8")) == metrics
    except (OSError, ValueError):
        whole = False
    return None if whole else out.metrics_file
