"""Built-in offline task: multi-step arithmetic word problems with a worked solution.

Each problem starts with a count and applies two to four operations; the thinking
walks through every step with its arithmetic, the answer is the final number. So the
chain of thought is many times longer than the answer, as in the paper's datasets.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from .example import Example

NAMES = [
    ("Tom", "he"), ("Ann", "she"), ("Ravi", "he"), ("Mei", "she"), ("Omar", "he"),
    ("Lena", "she"), ("Kofi", "he"), ("Sara", "she"), ("Ivan", "he"), ("Nora", "she"),
]
FRIENDS = ["Ben", "Lily", "Sam", "Zoe", "Max", "Ada"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells"]
CONTAINERS = ["bags", "boxes", "packs", "jars"]


@dataclass
class _State:
    name: str
    pronoun: str
    item: str
    count: int


def _buy(rng: random.Random, s: _State) -> tuple[str, str]:
    extra = rng.randint(2, 20)
    total = s.count + extra
    question = f"{s.pronoun.capitalize()} finds {extra} more {s.item}."
    thinking = (
        f"{s.name} finds {extra} more {s.item}, so {s.pronoun} now has "
        f"{s.count} + {extra} = {total} {s.item}."
    )
    s.count = total
    return question, thinking


def _give(rng: random.Random, s: _State) -> tuple[str, str] | None:
    if s.count < 3:
        return None
    given = rng.randint(1, s.count - 1)
    friend = rng.choice(FRIENDS)
    left = s.count - given
    question = f"{s.pronoun.capitalize()} gives {given} {s.item} to {friend}."
    thinking = (
        f"{s.name} gives {given} {s.item} to {friend}, which leaves "
        f"{s.count} - {given} = {left} {s.item}."
    )
    s.count = left
    return question, thinking


def _groups(rng: random.Random, s: _State) -> tuple[str, str]:
    groups, each = rng.randint(2, 6), rng.randint(2, 9)
    box = rng.choice(CONTAINERS)
    added = groups * each
    total = s.count + added
    question = f"{s.pronoun.capitalize()} buys {groups} {box} with {each} {s.item} in each."
    thinking = (
        f"{groups} {box} with {each} {s.item} in each hold {groups} * {each} = {added} {s.item}. "
        f"Now {s.name} has {s.count} + {added} = {total} {s.item}."
    )
    s.count = total
    return question, thinking


def _double(rng: random.Random, s: _State) -> tuple[str, str] | None:
    if s.count > 200:
        return None
    total = s.count * 2
    question = f"Then the number of {s.item} {s.pronoun} has doubles."
    thinking = f"Doubling {s.count} {s.item} gives {s.count} * 2 = {total} {s.item}."
    s.count = total
    return question, thinking


def _share(rng: random.Random, s: _State) -> tuple[str, str] | None:
    divisors = [k for k in range(2, 7) if s.count % k == 0 and s.count // k >= 2]
    if not divisors:
        return None
    parts = rng.choice(divisors)
    each = s.count // parts
    question = (
        f"{s.pronoun.capitalize()} splits the {s.item} into {parts} equal piles and keeps one."
    )
    thinking = (
        f"Splitting {s.count} {s.item} into {parts} equal piles gives "
        f"{s.count} / {parts} = {each} {s.item} per pile, and {s.name} keeps one pile."
    )
    s.count = each
    return question, thinking


STEPS = [_buy, _give, _groups, _double, _share]


def make_problem(rng: random.Random) -> Example:
    name, pronoun = rng.choice(NAMES)
    state = _State(name, pronoun, rng.choice(ITEMS), rng.randint(2, 30))
    question = [f"{name} has {state.count} {state.item}."]
    thinking = [f"{name} starts with {state.count} {state.item}."]
    n_steps = rng.randint(2, 4)
    while len(question) <= n_steps:
        step = rng.choice(STEPS)(rng, state)
        if step is not None:
            question.append(step[0])
            thinking.append(step[1])
    question.append(f"How many {state.item} does {name} have now?")
    thinking.append(f"So {name} has {state.count} {state.item} in the end.")
    return Example(prompt=" ".join(question), thinking=" ".join(thinking), answer=str(state.count))


def _unique_problems(stream: str, exclude: set[str] | frozenset[str] = frozenset()) -> Iterator[Example]:
    rng = random.Random(stream)
    seen = set(exclude)
    while True:
        example = make_problem(rng)
        if example.prompt not in seen:
            seen.add(example.prompt)
            yield example


def synthetic_split(split: str, n_train: int, n_test: int, seed: int) -> list[Example]:
    """Seeded splits; no test question ever appears in train (or in pre-training text)."""
    test = _take(_unique_problems(f"{seed}-test"), n_test, "test")
    if split == "test":
        return test
    held_out = {e.prompt for e in test}
    if split == "train":
        return _take(_unique_problems(f"{seed}-train", held_out), n_train, "train")
    if split == "pretrain":
        return _take(_unique_problems(f"{seed}-pretrain", held_out), n_train, "pretrain")
    raise ValueError(f"unknown synthetic split {split!r}")


def _take(problems: Iterator[Example], n: int, split: str) -> list[Example]:
    out = []
    for index, example in zip(range(n), problems, strict=False):
        out.append(Example(example.prompt, example.thinking, example.answer, f"synthetic-{split}-{index}"))
    return out
