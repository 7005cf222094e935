"""W&B tracking shared by the stages: the run's mode, and a run that is always finished.

Runs are offline unless the user is logged in (:func:`wandb_mode`), so nothing reaches the
network by default (``wandb sync`` uploads later). :func:`wandb_run` opens a run from the
``logger`` config group (``conf/logger/wandb.yaml``) and finishes it whatever happens: an
unfinished run leaks into the next job of a multirun.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def wandb_mode(requested: str | None) -> str:
    """Online only when the user is logged in; offline otherwise (sync later)."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    logged_in = bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.exists() and "api.wandb.ai" in netrc.read_text()
    )
    return "online" if logged_in else "offline"


@contextmanager
def wandb_run(
    logger_cfg: Mapping[str, Any], name: str, job_type: str, config: Mapping[str, Any]
) -> Iterator[Any]:
    """A W&B run (``wandb.init``) in ``logger_cfg.dir``, finished on leaving the block.

    logger_cfg: the ``logger`` group (project, entity, group, tags, mode, dir); config: the
    run's hyperparameters, logged once.
    """
    import wandb

    Path(logger_cfg["dir"]).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger_cfg.get("project"),
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group"),
        tags=list(logger_cfg.get("tags") or []),
        name=name,
        job_type=job_type,
        dir=logger_cfg["dir"],
        mode=wandb_mode(logger_cfg.get("mode")),
        config=dict(config),
    )
    try:
        yield run
    finally:
        run.finish()
