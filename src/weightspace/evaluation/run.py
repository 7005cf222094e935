"""The evaluation at the end of an autoencoder's training, and how its results read in print.

``conf/train_autoencoder.yaml`` names :func:`evaluate_run` as its ``evaluator`` (by
``_target_``: the training stage does not import this later stage). It evaluates the trained
model on the held-out members, writes the results into the run's ``evaluation/`` folder and
logs them to the active W&B run (:func:`~weightspace.evaluation.dashboard.log_evaluation`:
headline scalars, tables, figures); the training command prints ``results.summary(run_dir)``
(:func:`weightspace.evaluation.tables.summarize_evaluation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace.autoencoder.run import EVALUATION_DIR
from weightspace.evaluation.audit import AuditOptions
from weightspace.evaluation.dashboard import log_evaluation
from weightspace.evaluation.evaluate import evaluate_autoencoder
from weightspace.evaluation.results import EvalResults


def evaluate_run(
    model: Any,
    datamodule: Any,
    run_dir: str | Path,
    seed: int = 0,
    audit: Mapping[str, Any] | bool | None = None,
    scope: str | None = None,
) -> EvalResults:
    """Evaluate ``model`` on ``datamodule``'s held-out members (probes against the baselines,
    reconstruction, generation and its memorization audit), save the results to
    ``run_dir/evaluation/`` and log them to W&B when a run is active.

    ``audit`` (config ``evaluator.audit``; on in ``experiment=autoencoder/demo``): True (the
    memorization audit at its default sizes), a mapping of
    :class:`~weightspace.evaluation.audit.AuditOptions` (``evaluator.audit={n_boot: 200}``),
    or False / None (no audit). ``scope``: W&B keys under ``eval/<scope>/`` (one architecture
    of a run over several)."""
    opts = None
    if audit is not None and audit is not False:
        opts = AuditOptions.from_mapping(None if audit is True else audit)
    results = evaluate_autoencoder(model, datamodule, seed=seed, audit=opts)
    paths = results.save(Path(run_dir) / EVALUATION_DIR)
    log_evaluation(results, paths, model, datamodule, seed, scope)  # to the active W&B run
    return results
