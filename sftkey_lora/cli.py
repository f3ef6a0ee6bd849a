"""Command line: a thin layer over the Python API; the only place that sets exit codes.

A `UserError` anywhere below becomes one message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import SharedUserError, UserError
from .output import set_verbosity
from .recipe import load_recipe
from .runtime.distributed import part_together, rank

EXIT_USER_ERROR = 2


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="recipe YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a recipe field, e.g. data.limit=100")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftkey-lora", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="show the tokens each stage trains on")
    _recipe_args(inspect)
    inspect.add_argument("--n", type=int, default=3, help="examples to show (default 3)")
    inspect.add_argument("--json", action="store_true", help="print a JSON list instead")

    run = commands.add_parser("run", help="train every stage of the recipe's strategy")
    _recipe_args(run)
    run.add_argument("--output", type=Path, default=None,
                     help="run directory (default: adapters/<recipe name>)")
    run.add_argument("--fresh", action="store_true",
                     help="delete the run directory's earlier run and start over")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved plan of every stage; load no model or data")
    run.add_argument("--json", action="store_true", help="print JSON (the plan, or run.json at the end)")

    _eval_parsers(commands)

    _bench_parser(commands)

    commands.add_parser("tasks-dir", help="print where the sftkey_* lm-eval tasks are (for --include_path)")

    tiny = commands.add_parser("build-tiny", help="rebuild the built-in tiny model from scratch")
    tiny.add_argument("--output", type=Path, default=None,
                      help="where to write it (default: the package's builtin/tiny)")
    tiny.add_argument("--steps", type=int, help="pre-training steps (default 3000)")
    tiny.add_argument("--seed", type=int, help="seed of data and initialisation (default 0)")
    for command in commands.choices.values():
        _output_args(command)
    return parser


def _output_args(parser: argparse.ArgumentParser) -> None:
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const="quiet",
                        default="normal", help="print only results, warnings and errors (no progress)")
    chosen.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const="verbose",
                        help="also print each logging step's figures and every library message "
                             "(the run directory's run.log keeps them all whatever is chosen)")


def _eval_parsers(commands: argparse._SubParsersAction) -> None:
    comparison = commands.add_parser("compare", help="train and evaluate sft, sft_tag, key_tag and "
                                     "sftkey_tag with the recipe's settings; write the comparison")
    _recipe_args(comparison)
    comparison.add_argument("--output", type=Path, default=None,
                            help="directory of the four runs and the comparison "
                                 "(default: adapters/<recipe name>-compare)")
    comparison.add_argument("--fresh", action="store_true", help="start every strategy's run over")
    comparison.add_argument("--seeds", type=_seed_list, default=None, metavar="0,1,2",
                            help="train every strategy once per seed (each run in seed-N/); the report "
                                 "gives means over the seeds and tests pooled over them "
                                 "(default: one run, the recipe's training.seed)")

    export = commands.add_parser("export", help="a finished run's final model as one plain model directory")
    export.add_argument("run_dir", type=Path, help="the run directory")
    export.add_argument("--output", type=Path, default=None,
                        help="where to write it (default: RUN_DIR/final)")
    export.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                        help="the weights' dtype (default: the base model's own, as its config.json "
                             "declares)")
    export.add_argument("--gguf", type=_task_list, default=[], metavar="TYPE[,TYPE]",
                        help="also write <name>-<TYPE>.gguf for llama.cpp and Ollama, with a Modelfile: "
                             "f16, bf16, q8_0, f32, or a llama.cpp quantization such as q4_k_m")
    export.add_argument("--gguf-adapter", action="store_true",
                        help="also write the last stage's base and its LoRA adapter as a GGUF pair "
                             "(llama.cpp's --lora), in the first --gguf type")

    significance = commands.add_parser("significance", help="paired differences of two evaluations on the "
                                       "same test items (exact McNemar p, Holm-adjusted over the tasks; "
                                       "bootstrap intervals; verdict)")
    significance.add_argument("a", type=Path, help="a run directory or an `eval` output directory")
    significance.add_argument("b", type=Path, help="the one to compare it against (differences are a − b)")
    significance.add_argument("--json", action="store_true", help="print a JSON list of the pairs")

    evaluate = commands.add_parser("eval", help="evaluate a run (or any model) on the sftkey_* lm-eval tasks")
    evaluate.add_argument("target", help="a run directory, a model (hub id, directory, builtin:tiny), or a "
                          ".gguf file (run by llama.cpp)")
    evaluate.add_argument("--tasks", type=_task_list, default=None,
                          help="comma-separated lm-eval tasks (default: the recipe's eval.tasks)")
    evaluate.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    evaluate.add_argument("--recipe", type=Path, default=None,
                          help="for a model: the recipe whose format, quantization and eval settings apply")
    evaluate.add_argument("--output", type=Path, default=None,
                          help="for a model: where results go (default: evals/<model name>); "
                               "a run's go into its directory")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a recipe field, e.g. eval.alpha=0.5")


def _bench_parser(commands: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from .bench.contest import CONTENDERS
    from .bench.workload import Workload

    bench = commands.add_parser("bench", help="time our stage 1 and 2 steps against TRL's SFTTrainer and a "
                                "plain Trainer (each in its own process); print figures and ratios")
    bench.add_argument("--json", action="store_true", help="end with one JSON line of figures and ratios")
    bench.add_argument("--contenders", type=_task_list, default=None,
                       help=f"comma-separated, sftkey first (default: {','.join(CONTENDERS)}, "
                            "and unsloth on a GPU where it is installed)")
    for field in fields(Workload):
        bench.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                           default=field.default, help=f"default {field.default}")


def cmd_bench(args: argparse.Namespace) -> None:
    from dataclasses import fields

    from .bench.contest import CONTENDERS, OURS, default_contenders, run_bench, setting, table
    from .bench.workload import Workload

    known = (*CONTENDERS, "unsloth")
    contenders = args.contenders or default_contenders()
    if set(contenders) - set(known) or contenders[0] != OURS:
        raise UserError(f"--contenders: {OURS} first, then any of {', '.join(known[1:])} "
                        f"(got {','.join(contenders)})")
    try:
        workload = Workload(**{field.name: getattr(args, field.name) for field in fields(Workload)})
        workload = workload.of_model()
    except ValueError as err:
        raise UserError(f"bench: {err}") from None
    if "unsloth" in contenders:
        from .train.unsloth import require_unsloth

        require_unsloth()
    report = run_bench(workload, contenders, progress=lambda line: print(line, file=sys.stderr))
    print(setting(workload, contenders))
    print(table(report))
    if args.json:
        print(json.dumps(report))


def cmd_inspect(args: argparse.Namespace) -> None:
    from .inspection import as_json, as_text, inspect_recipe

    if args.n < 1:
        raise UserError("--n: must be at least 1")
    inspection = inspect_recipe(load_recipe(args.recipe, args.overrides))
    if args.json:
        print(json.dumps(as_json(inspection, args.n), ensure_ascii=False, indent=1))
        print(inspection.report.format(), file=sys.stderr)
        ratio = inspection.median_thinking_answer_ratio()
        print(f"median thinking/answer token ratio: {ratio:.1f}", file=sys.stderr)
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(as_text(inspection, args.n, colour))


def cmd_run(args: argparse.Namespace) -> None:
    from .api import default_output, run
    from .rundir.layout import RunLayout
    from .train.plan import plan_run

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = args.output or default_output(recipe)
    if args.dry_run:
        plan = plan_run(recipe, RunLayout(run_dir)).as_json(recipe)
        print(json.dumps(plan, indent=1) if args.json else _plan_text(plan))
        return
    record = run(recipe, run_dir, fresh=args.fresh)
    if args.json:
        print(json.dumps(record.data, indent=1, ensure_ascii=False))


def _plan_text(plan: dict) -> str:
    lines = [f"output: {plan['output']}", f"steps: {' -> '.join(plan['steps'])}"]
    for stage in plan["stages"]:
        trains = f"lora {stage['lora']}" if stage["lora"] else "every weight (full-parameter)"
        lines.append(f"{stage['name']}: labels {stage['labels']}, base {stage['base']}, "
                     f"precision {stage['precision']}, {trains}")
        lines += [f"  {key}: {value}" for key, value in stage["training_args"].items()]
    if plan["merge"]:
        merge = plan["merge"]
        lines.append(f"merge: {merge['adapter']} into 16-bit weights ({merge['base']} base) "
                     f"-> {merge['output']}, loaded by stage 2 in {merge['stage2_quantization']}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> None:
    from .api import compare

    compare(load_recipe(args.recipe, args.overrides), args.output, args.fresh, args.seeds)


def cmd_export(args: argparse.Namespace) -> None:
    import time

    from .api import export

    started = time.perf_counter()
    out = export(args.run_dir, args.output, args.dtype, args.gguf, args.gguf_adapter)
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"exported {out} ({size / 2**20:.1f} MB) in {time.perf_counter() - started:.1f} s")
    for path in sorted(out.glob("*.gguf")):
        print(f"  {path.name} ({path.stat().st_size / 2**20:.1f} MB)")


def cmd_significance(args: argparse.Namespace) -> None:
    from .api import significance
    from .evaluation.significance import pairs_table

    pairs = significance(args.a, args.b)
    print(json.dumps([pair.record() for pair in pairs], indent=2) if args.json else pairs_table(pairs))


def _task_list(text: str) -> list[str]:
    return [task.strip() for task in text.split(",") if task.strip()]


def _seed_list(text: str) -> list[int]:
    """Distinct non-negative whole numbers, comma-separated."""
    try:
        seeds = [int(seed) for seed in _task_list(text)]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"distinct whole numbers, e.g. 0,1,2 (got {text!r})")
    return seeds


def cmd_eval(args: argparse.Namespace) -> None:
    from .api import evaluate

    evaluate(args.target, args.tasks, args.limit, args.recipe, args.output, args.overrides)


def cmd_tasks_dir(args: argparse.Namespace) -> None:
    from .evaluation.harness import tasks_dir

    print(tasks_dir())


def cmd_build_tiny(args: argparse.Namespace) -> None:
    from .tiny_model import build_tiny
    from .train.loading import BUILTIN_DIR

    output = args.output or BUILTIN_DIR / "tiny"
    given = {"steps": args.steps, "seed": args.seed}
    summary = build_tiny(output, **{k: v for k, v in given.items() if v is not None})
    print(json.dumps({"output": str(output), **summary}))


COMMANDS = {"inspect": cmd_inspect, "run": cmd_run, "eval": cmd_eval, "compare": cmd_compare,
            "export": cmd_export, "significance": cmd_significance,
            "bench": cmd_bench, "tasks-dir": cmd_tasks_dir, "build-tiny": cmd_build_tiny}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_verbosity(args.verbosity)
    try:
        COMMANDS[args.command](args)
    except UserError as err:
        if not isinstance(err, SharedUserError) or rank() == 0:
            print(f"sftkey-lora: error: {err}", file=sys.stderr)
        if isinstance(err, SharedUserError):
            part_together()
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
