"""What a command prints, what the run log keeps, and the library messages a user cannot act on.

Every message goes through Python logging. The console shows, by verbosity:
- `quiet`: results (the run's summary, metrics, the comparison), warnings and errors;
- `normal`: also what the run is doing, and its progress: bars on a terminal, a plain line
  now and then off one (`progress`);
- `verbose`: also each logging step's figures, the libraries' info messages and the
  messages in `UNACTIONABLE`.
The run log (`run.log` in the run directory) keeps every message at any verbosity.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from .runtime.distributed import rank

Verbosity = Literal["quiet", "normal", "verbose"]
RESULT = 25  # between INFO and WARNING: shown with --quiet
logging.addLevelName(RESULT, "RESULT")
OURS = "sftkey_lora"
# Every level of ours reaches the handlers, whether or not a verbosity was chosen: the run log
# keeps them all, and the console's own filter decides what it shows.
logging.getLogger(OURS).setLevel(logging.DEBUG)
# The libraries whose messages reach the console through ours; where one installs its
# own console handler, that handler is removed so the message is printed once.
LIBRARIES = ("transformers", "datasets", "huggingface_hub", "lm_eval", "peft", "accelerate", "bitsandbytes",
             "torch", "py.warnings")
# (library, text its message contains, why it needs no action): in the run log, on the
# console only with --verbose.
UNACTIONABLE = (
    ("bitsandbytes", "Failed to load CPU gemm_4bit_forward",
     "4-bit layers on a CPU use bitsandbytes' own kernels when the optional hub kernel is absent; "
     "results are the same"),
    ("transformers", "new embeddings will be initialized from a multivariate normal",
     "the tag tokens' rows start at the vocabulary's mean and are trained with the adapter"),
    ("transformers", "mtime may not be reliable on this filesystem",
     "checkpoints saved less than a second apart are ordered by their step, which is right"),
    ("lm_eval", "`pretrained` model kwarg is not of type `str`",
     "the evaluation hands lm-eval the model it has already loaded, in one process"),
    ("lm_eval", "Passed an already-initialized model through `pretrained`",
     "the evaluation hands lm-eval the model it has already loaded, in one process"),
    ("lm_eval", "Custom kwargs can be passed to `--metadata`",
     "the sftkey_* tasks read their data and format from the recipe, not from --metadata"),
    ("lm_eval", "specified through cli, these settings will update",
     "eval.max_gen_toks reaches lm-eval as a generation setting; decoding stays greedy"),
)

QUIET_BARS = "TQDM_DISABLE"
_state: dict[str, Verbosity] = {}


def set_verbosity(verbosity: Verbosity = "normal") -> None:
    """Route every message to the console at `verbosity` (idempotent: the last call wins)."""
    were_disabled = "verbosity" in _state and bars_disabled()
    _state["verbosity"] = verbosity
    if bars_disabled():  # read when tqdm is first imported: the libraries' bars too
        os.environ[QUIET_BARS] = "1"
    elif were_disabled:
        os.environ.pop(QUIET_BARS, None)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Console)]:
        root.removeHandler(handler)
    root.addHandler(_Console())
    logging.captureWarnings(False)  # and again: whatever took Python's warnings since gives them back
    logging.captureWarnings(True)
    route_library_logs()


def ensure_output() -> None:
    """The console at normal verbosity unless one was chosen (the API's first call)."""
    if "verbosity" not in _state:
        set_verbosity()


def verbosity() -> Verbosity:
    return _state.get("verbosity", "normal")


def bars_disabled() -> bool:
    """Progress bars are left out with --quiet, and where stderr is no terminal."""
    return verbosity() == "quiet" or not on_terminal()


def on_terminal() -> bool:
    """Whether stderr is a terminal (not a file or a pipe), where a bar redraws in place."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def route_library_logs() -> None:
    """Send the imported libraries' messages through our console and run log: each of
    transformers, datasets and huggingface_hub prints through a handler of its own, added
    when it is imported, so this runs again where they are first used (`train/loading.py`).
    Nothing changes until a verbosity is chosen (the CLI, or the API's first call)."""
    if "verbosity" not in _state:
        return
    level = logging.INFO if verbosity() == "verbose" else logging.WARNING
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(level)
    if "transformers" in sys.modules:  # its loading and saving bars, one per shard file
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if verbosity() == "verbose" else hf_logging.disable_progress_bar)()


@contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """Every message, whatever the verbosity, also appended to `path` while the block runs;
    what stops the block is written there too (a bug's traceback, a user error's message)."""
    from .errors import UserError

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_LogFormat("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    except BaseException as err:  # to the file alone: the command prints it on the console
        user = isinstance(err, UserError | KeyboardInterrupt)
        handler.handle(logging.makeLogRecord({
            "name": OURS, "levelno": logging.ERROR, "levelname": "ERROR",
            "msg": f"stopped: {err or type(err).__name__}", "exc_info": None if user else sys.exc_info()}))
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


def unactionable(record: logging.LogRecord) -> str | None:
    """Why a library's message needs no action, where it is one of `UNACTIONABLE`."""
    library, text = source(record), record.getMessage()
    return next((why for name, part, why in UNACTIONABLE if name == library and part in text), None)


def source(record: logging.LogRecord) -> str:
    """Who said it: `sftkey_lora`, a library's name, or `py.warnings` for a Python warning."""
    return record.name if record.name == "py.warnings" else record.name.split(".")[0]


class _Console(logging.Handler):
    """stderr as it is when the message is written (so that a caller's redirection holds)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(_ConsoleFormat())

    def filter(self, record: logging.LogRecord) -> bool:
        chosen, said_by = verbosity(), source(record)
        if said_by == OURS and rank() != 0:
            return record.levelno >= logging.WARNING  # the main process says it all
        if chosen == "verbose":
            return True
        if unactionable(record):
            return False
        if said_by != OURS:
            return record.levelno >= logging.WARNING
        return record.levelno >= (RESULT if chosen == "quiet" else logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # a closed stream must not stop the run
            self.handleError(record)


class _ConsoleFormat(logging.Formatter):
    """Our messages as they are, a library's after its name, a Python warning on one line."""

    def format(self, record: logging.LogRecord) -> str:
        text, said_by = record.getMessage(), source(record)
        if said_by == OURS:
            return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"
        if said_by == "py.warnings":  # "file:line: Category: message\n  source line"
            return f"[warning] {text.splitlines()[0]}"
        return f"[{said_by}] {text}"


class _LogFormat(logging.Formatter):
    """The run log's lines; a message kept off the console says why."""

    def format(self, record: logging.LogRecord) -> str:
        why = unactionable(record)
        return super().format(record) + (f" [not shown: {why}]" if why else "")

