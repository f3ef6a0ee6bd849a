"""Data sources producing `Example(prompt, thinking, answer)` with a report of dropped rows."""

from .example import BadRow, DataReport, Example
from .sources import load_examples

__all__ = ["BadRow", "DataReport", "Example", "load_examples"]
