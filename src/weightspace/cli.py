"""Entry-point helpers: user errors become one line and exit code 2; progress bars that suit
both a terminal and a log file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tqdm.auto import tqdm

from weightspace.errors import WeightspaceError

#: Seconds between a progress bar's updates when stderr is a file (a job's log, CI): each
#: update is another line there, and long jobs would write thousands.
LOG_INTERVAL = 30.0

T = TypeVar("T")


def run_or_exit(fn: Callable[..., T], *args, **kwargs) -> T:
    """Call ``fn``; a :class:`WeightspaceError` prints ``error: ...`` and exits with status 2.

    Anything written before the error stays on disk: writes are atomic, and a re-run resumes.
    """
    try:
        return fn(*args, **kwargs)
    except WeightspaceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def progress_bar(**kwargs: Any) -> tqdm:
    """``tqdm(**kwargs)`` with the project's defaults: sized to the terminal; in a log file
    (stderr not a terminal, not a notebook) an update every :data:`LOG_INTERVAL` seconds
    instead of ten a second."""
    kwargs.setdefault("dynamic_ncols", True)
    in_notebook = "notebook" in type.__getattribute__(tqdm, "__module__")
    if not in_notebook and not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(**kwargs)
