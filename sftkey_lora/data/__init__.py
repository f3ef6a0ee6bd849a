"""Data sources producing `Example(prompt, thinking, answer)` with a report of dropped rows."""

from .example import AnswerKind, BadRow, DataReport, Example
from .sources import SOURCES, load_examples, task_name

__all__ = ["SOURCES", "AnswerKind", "BadRow", "DataReport", "Example", "load_examples", "task_name"]
