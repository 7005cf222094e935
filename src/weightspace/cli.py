"""Running a task function from an entry point: user errors become one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from weightspace.errors import WeightspaceError

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
