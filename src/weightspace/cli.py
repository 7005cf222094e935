"""Entry-point helpers: user errors become one line and exit code 2 (config composition
included); progress bars that suit both a terminal and a log file."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tqdm.auto import tqdm

from weightspace.errors import WeightspaceError

#: Seconds between a progress bar's updates when stderr is a file (a job's log, CI): each
#: update is another line there, and long jobs would write thousands.
LOG_INTERVAL = 30.0

T = TypeVar("T")


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def user_error(err: BaseException) -> WeightspaceError | None:
    """The :class:`WeightspaceError` behind ``err``: itself, or the cause Hydra's
    ``instantiate`` wrapped (a datamodule's ConfigError arrives as InstantiationException)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, WeightspaceError):
            return err
        err, seen = err.__cause__, seen + 1
    return None


def run_or_exit(fn: Callable[..., T], *args, **kwargs) -> T:
    """Call ``fn``; a :class:`WeightspaceError` (also one Hydra's ``instantiate`` wrapped)
    prints ``error: ...`` and exits with status 2.

    Anything written before the error stays on disk: writes are atomic, and a re-run resumes.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        found = user_error(e)
        if found is None:
            raise
        _exit(" ".join(str(found).split()))
        raise  # unreachable: _exit leaves


def composition_message(err: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing the config: an
    unknown group option (``encoder=nope``), an override that does not parse, a key that
    does not exist, a missing value."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, OverrideParseException):
        first = str(err).splitlines()[0] if str(err) else "cannot parse"
        return f"{err.override}: {first} (override grammar: key=value, lists [a,b])"

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        from weightspace.config import CONF_DIR

        group, _, option = err.missing_cfg_file.rpartition("/")
        options = err.options or sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        choices = ", ".join(o for o in options if o != "none") or "none here"
        return f"{group or 'config'}: unknown option '{option}' (choose from {choices})"
    if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"{err.full_key}: {first}"
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause).splitlines()[0] not in text:
        text += f" ({str(cause).splitlines()[0]})"
    return text or type(err).__name__


def launch(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function; what Hydra refuses while composing the config (an
    unknown option, a malformed override) ends as one ``error:`` line and exit 2 too, where
    Hydra itself prints several lines and exits 1. ``HYDRA_FULL_ERROR=1`` set by the user
    keeps Hydra's full traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing and exit(1)
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        found = user_error(e)
        _exit(" ".join(str(found).split()) if found else composition_message(e))
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def progress_bar(**kwargs: Any) -> tqdm:
    """``tqdm(**kwargs)`` with the project's defaults: sized to the terminal; in a log file
    (stderr not a terminal, not a notebook) an update every :data:`LOG_INTERVAL` seconds
    instead of ten a second."""
    kwargs.setdefault("dynamic_ncols", True)
    in_notebook = "notebook" in type.__getattribute__(tqdm, "__module__")
    if not in_notebook and not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(**kwargs)
