"""The one exception type the CLI turns into exit code 2 and a single message."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave us (recipe, data, model), not a bug.

    The message must name the field, file or line at fault; the CLI prints it alone,
    without a traceback, and exits with code 2.
    """


class SharedUserError(UserError):
    """A UserError every process of a launch (torchrun) raises alike, from one decision of the
    main process: only the main process prints it, so the user reads it once."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, for one-line user messages."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
