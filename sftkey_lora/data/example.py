"""What every data source produces, and the report of what it could not use."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_SAMPLES_PER_REASON = 3
# How a reference answer is compared: math-verify, an option letter, or normalised text.
AnswerKind = Literal["math", "choice", "text"]


@dataclass(frozen=True)
class Example:
    prompt: str
    thinking: str
    answer: str
    id: str = ""
    labels: tuple[str, ...] = ()  # the option letters of a multiple-choice question


class BadRow(Exception):
    """A row that cannot be used; `reason` is the short name it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class DataReport:
    """Rows read, used and dropped by reason (with the first few of each), never silent."""

    source: str
    split: str
    rows_read: int = 0
    used: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, where: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        shown = self.samples.setdefault(reason, [])
        if len(shown) < MAX_SAMPLES_PER_REASON:
            shown.append(f"{where}: {detail}" if detail else where)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "split": self.split,
            "rows_read": self.rows_read,
            "used": self.used,
            "dropped": dict(self.dropped),
            "samples": self.samples,
        }

    def format(self) -> str:
        lines = [
            f"data: {self.source} ({self.split}): {self.rows_read} rows read, "
            f"{self.used} used, {sum(self.dropped.values())} dropped"
        ]
        for reason, count in self.dropped.most_common():
            lines.append(f"  dropped {count} × {reason}")
            lines.extend(f"    {sample}" for sample in self.samples.get(reason, []))
        return "\n".join(lines)
