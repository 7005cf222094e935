"""W&B tracking shared by the stages: the run's mode, and a run that is always finished.

Runs are offline unless the user is logged in (:func:`wandb_mode`), so nothing reaches the
network by default (``wandb sync`` uploads later). :func:`wandb_run` opens a run from the
``logger`` config group (``conf/logger/wandb.yaml``) and finishes it whatever happens: an
unfinished run leaks into the next job of a multirun.

What every stage's run shares: the config without fitted values (:func:`run_config`), a name
that tells a sweep's jobs apart (:func:`run_name`, :func:`sweep_overrides`), and files logged
as artifacts by reference (:func:`log_reference`: zoos, checkpoints; nothing uploaded).
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
    run's hyperparameters, logged once without fitted values (:func:`run_config`); ``name``
    gets a sweep job's overrides (:func:`run_name`).
    """
    import wandb

    Path(logger_cfg["dir"]).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger_cfg.get("project"),
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group"),
        tags=list(logger_cfg.get("tags") or []),
        name=run_name(name, sweep_overrides()),
        job_type=job_type,
        dir=logger_cfg["dir"],
        mode=wandb_mode(logger_cfg.get("mode")),
        config=run_config(config),
    )
    try:
        yield run
    finally:
        run.finish()


# Values fitted on the data, not chosen: long float lists that bury a run's config.
FITTED = frozenset({"stats_mean", "stats_std", "normalizer", "probe_inputs", "probe_targets"})


def run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the fitted values (:data:`FITTED`, at any depth): what W&B shows
    and compares as the run's hyperparameters."""
    return {str(k): _drop_fitted(v) for k, v in config.items() if k not in FITTED}


def _drop_fitted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return run_config(value)
    if isinstance(value, list | tuple):
        return [_drop_fitted(v) for v in value]
    return value


def sweep_overrides() -> str | None:
    """The overrides of this job of a Hydra multirun (``hydra.job.override_dirname``, e.g.
    ``model.latent_dim=16,seed=1``); None outside a multirun or without overrides."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return str(hc.job.override_dirname) or None


def run_name(base: str, overrides: str | None = None) -> str:
    """``base``, with a sweep job's ``overrides`` (:func:`sweep_overrides`) in brackets, so that
    the jobs of a sweep are told apart in the runs table: ``ae-mlp-none[seed=1]``."""
    return f"{base}[{overrides}]" if overrides else base


def log_reference(
    run: Any, path: str | Path, name: str, kind: str, metadata: Mapping[str, Any] | None = None
) -> Any:
    """Log the file or folder ``path`` as a W&B artifact *by reference* (a ``file://`` URI and
    its checksums; nothing is copied or uploaded). ``name``: letters, digits, ``-_.`` (others
    become ``-``); ``kind``: the artifact type (``zoo``, ``model``). Returns the artifact."""
    import re

    import wandb

    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or kind
    art = wandb.Artifact(clean, type=kind, metadata=dict(metadata or {}))
    art.add_reference(Path(path).resolve().as_uri())
    run.log_artifact(art)
    return art
