"""Data preparation at dataset scale, against the floor of the tokenizer alone.

    python -m sftkey_lora.bench.prep [--rows 220000] [--tokenizer DIR] [--workdir DIR]

Writes `--rows` rows shaped like OpenR1-Math-220k (`problem`, `solution`, `answer`; solutions
of realistic, long-tailed length) to a Parquet file, then measures, each in a fresh process:

- **kit**: what a run does before training: `load_examples` (read, check) and `encode_examples`
  (render, tokenize with offsets, segments and masks) with the paper's base format, into an
  empty cache (`--workdir`/cache, which it then holds);
- **rerun**: the same again, as a rerun or a resumed stage does: the rows come from the cache;
- **floor**: the tokenizer alone on the same rendered texts, batch-encoded with offsets, keeping
  nothing but the token counts.

It prints the wall time, the peak resident memory and the resident memory when the clock
started (imports, tokenizer; for the floor also the rendered texts) of each, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

MAX_LENGTH = 4096  # the OpenR1 recipes' format.max_length
_STEPS = (
    "Let ${v}$ be the number of {thing}.",
    "Then ${v} + {a} = {b}$, so ${v} = {c}$.",
    "Multiplying both sides by {a} gives ${a}{v} = {d}$.",
    "We compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}} = \\frac{{{e}}}{{{f}}}$.",
    "By the triangle inequality, the sum of any two sides exceeds the third, hence {a} < {v} < {b}.",
    "Substituting ${v} = {c}$ into the first equation, we find ${v}^2 - {a}{v} + {b} = {e}$.",
    "Since {a} and {b} are coprime, the remainder of ${v}$ modulo {b} is {c}.",
    "Note that this holds for every integer ${v} \\geq {a}$, which completes the case analysis.",
)
_THINGS = ("apples", "students", "integers in the set", "ways to arrange the books", "roots")


def openr1_rows(n: int, seed: int = 0) -> dict[str, list[str]]:
    """`n` rows with OpenR1-Math-220k's columns: solutions of a few hundred to several
    thousand characters (log-normal, median about 1,400), short answers."""
    rng = random.Random(seed)
    rows: dict[str, list[str]] = {"problem": [], "solution": [], "answer": []}
    for _ in range(n):
        numbers = {key: rng.randint(2, 999) for key in "abcdef"}
        fill = {"v": rng.choice("xyznmk"), "thing": rng.choice(_THINGS), **numbers}
        problem = (f"Find the value of ${fill['v']}$ if ${fill['v']} + {numbers['a']} = {numbers['b']}$ "
                   f"and the {fill['thing']} number {numbers['c']}.")
        target = min(int(rng.lognormvariate(7.25, 0.6)), 14_000)  # characters
        sentences: list[str] = []
        while sum(map(len, sentences)) < target:
            sentences.append(rng.choice(_STEPS).format(**fill))
        answer = str(numbers["c"])
        rows["problem"].append(problem)
        rows["solution"].append(" ".join(sentences) + f" The answer is $\\boxed{{{answer}}}$.")
        rows["answer"].append(answer)
    return rows


def write_parquet(rows: dict[str, list[str]], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(rows), path)
    return path


def _memory(baseline: float | None) -> dict[str, float | None]:
    """Peak resident memory of this process, and what was resident when the clock started."""
    from ..runtime.hardware import process_peak_mb

    return {"peak_mb": process_peak_mb(), "baseline_mb": baseline}


def _setup(parquet: str, tokenizer_dir: str) -> tuple[Any, Any, Any]:
    from ..recipe import DataConfig, FormatConfig, ModelConfig
    from ..train.loading import load_tokenizer

    data = DataConfig(source="openr1_math", path=Path(parquet))
    return data, FormatConfig(max_length=MAX_LENGTH), load_tokenizer(ModelConfig(name_or_path=tokenizer_dir))


def kit(parquet: str, tokenizer_dir: str) -> dict[str, Any]:
    """The kit's preparation, as a run does it ($SFTKEY_LORA_CACHE names the cache)."""
    from ..data import load_examples
    from ..prep.prepare import encode_examples
    from ..runtime.hardware import resident_mb

    data, fmt, tokenizer = _setup(parquet, tokenizer_dir)
    baseline = resident_mb()
    started = time.perf_counter()
    examples, report = load_examples(data, tags=fmt.tag_strings)
    rows = encode_examples(examples, tokenizer, fmt, True, report)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, **_memory(baseline), "rows": len(rows),
            "tokens": sum(len(row.input_ids) for row in rows)}


def floor(parquet: str, tokenizer_dir: str, batch: int = 256) -> dict[str, Any]:
    """The tokenizer alone on the same rendered texts (rendered before the clock starts)."""
    import pyarrow.parquet as pq

    from ..data.example import Example
    from ..prep.render import render
    from ..runtime.hardware import resident_mb

    _, fmt, tokenizer = _setup(parquet, tokenizer_dir)
    table = pq.read_table(parquet).to_pydict()
    texts = [render(Example(p, s, a), fmt, True).text
             for p, s, a in zip(table["problem"], table["solution"], table["answer"], strict=True)]
    del table
    baseline = resident_mb()
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(texts), batch):
        encoded = tokenizer(texts[start:start + batch], add_special_tokens=False, return_offsets_mapping=True)
        tokens += sum(len(ids) for ids in encoded["input_ids"])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, **_memory(baseline), "rows": len(texts), "tokens": tokens}


def in_fresh_process(function: Any, *args: Any) -> dict[str, Any]:
    """Run `function(*args)` in a process of its own, so each peak is its own."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sftkey_lora.bench.prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=220_000)
    parser.add_argument("--tokenizer", default="builtin:tiny", help="a model or tokenizer directory")
    parser.add_argument("--workdir", type=Path, default=Path("bench-prep"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    parquet = str(write_parquet(openr1_rows(args.rows), args.workdir / f"openr1-shaped-{args.rows}.parquet"))
    cache = args.workdir / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    before = os.environ.get("SFTKEY_LORA_CACHE")
    os.environ["SFTKEY_LORA_CACHE"] = str(cache)  # the fresh processes inherit it
    try:
        results = {name: in_fresh_process(function, parquet, args.tokenizer)
                   for name, function in (("floor", floor), ("kit", kit), ("rerun", kit))}
    finally:
        os.environ.pop("SFTKEY_LORA_CACHE")
        if before is not None:
            os.environ["SFTKEY_LORA_CACHE"] = before
    for name in ("kit", "rerun"):
        results[f"{name}/floor"] = {key: results[name][key] / results["floor"][key]
                                    for key in ("seconds", "peak_mb")}
    for name, figures in results.items():
        print(name, " ".join(f"{key} {value:,.2f}" for key, value in figures.items() if value is not None))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
