"""Built-in offline task: multi-step arithmetic word problems with a worked solution.

Each problem starts with a count and applies two to four operations; the thinking
walks through every step with its arithmetic. So the chain of thought is many times
longer than the answer, as in the paper's datasets. Two kinds of answer:

- `number`: the final count, which the thinking's last sentence already states (the
  answer is a copy: once the thinking is learned, little is left to learn in the answer);
- `letter`: the question lists four options (the final count among counts the problem
  passes through and near misses) and the answer is the right option's letter, which the
  thinking never names: the answer is a lookup of its own, as in multiple-choice data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .example import Example

SyntheticAnswer = Literal["number", "letter"]
LETTERS = ("A", "B", "C", "D")

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


def make_problem(rng: random.Random, answer: SyntheticAnswer = "number") -> Example:
    name, pronoun = rng.choice(NAMES)
    state = _State(name, pronoun, rng.choice(ITEMS), rng.randint(2, 30))
    question = [f"{name} has {state.count} {state.item}."]
    thinking = [f"{name} starts with {state.count} {state.item}."]
    counts = [state.count]
    n_steps = rng.randint(2, 4)
    while len(question) <= n_steps:
        step = rng.choice(STEPS)(rng, state)
        if step is not None:
            question.append(step[0])
            thinking.append(step[1])
            counts.append(state.count)
    question.append(f"How many {state.item} does {name} have now?")
    thinking.append(f"So {name} has {state.count} {state.item} in the end.")
    prompt = " ".join(question)
    if answer == "number":
        return Example(prompt=prompt, thinking=" ".join(thinking), answer=str(state.count))
    options = _options(rng, counts)
    listed = "\n".join(f"{letter}. {value}" for letter, value in zip(LETTERS, options, strict=True))
    return Example(prompt=f"{prompt}\n{listed}", thinking=" ".join(thinking),
                   answer=LETTERS[options.index(state.count)], labels=LETTERS)


def _options(rng: random.Random, counts: list[int]) -> list[int]:
    """The final count and three other positive numbers, shuffled: counts the problem passed
    through first (they appear in the thinking too), then near misses of the final count."""
    final = counts[-1]
    wrong = list(dict.fromkeys(count for count in counts[:-1] if count != final))
    rng.shuffle(wrong)
    while len(wrong) < len(LETTERS) - 1:
        miss = final + rng.choice((-1, 1)) * rng.randint(1, 10)
        if miss > 0 and miss != final and miss not in wrong:
            wrong.append(miss)
    options = [final, *wrong[: len(LETTERS) - 1]]
    rng.shuffle(options)
    return options


def _unique_problems(stream: str, answer: SyntheticAnswer,
                     exclude: set[str] | frozenset[str] = frozenset()) -> Iterator[Example]:
    """Problems of one seeded stream, none twice and none in `exclude` (by the question
    before its options, so a test problem never reaches training with other options)."""
    rng = random.Random(stream)
    seen = set(exclude)
    while True:
        example = make_problem(rng, answer)
        question = _question(example)
        if question not in seen:
            seen.add(question)
            yield example


def _question(example: Example) -> str:
    return example.prompt.split("\n", 1)[0]


def synthetic_split(split: str, n_train: int, n_test: int, seed: int,
                    answer: SyntheticAnswer = "number") -> list[Example]:
    """Seeded splits; no test question ever appears in train (or in pre-training text)."""
    test = _take(_unique_problems(f"{seed}-test", answer), n_test, "test")
    if split == "test":
        return test
    held_out = {_question(e) for e in test}
    if split in ("train", "pretrain"):
        return _take(_unique_problems(f"{seed}-{split}", answer, held_out), n_train, split)
    raise ValueError(f"unknown synthetic split {split!r}")


def _take(problems: Iterator[Example], n: int, split: str) -> list[Example]:
    return [Example(example.prompt, example.thinking, example.answer, f"synthetic-{split}-{index}",
                    example.labels)
            for index, example in zip(range(n), problems, strict=False)]
