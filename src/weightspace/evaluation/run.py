"""The evaluation at the end of an autoencoder's training, and how its results read in print.

``conf/train_autoencoder.yaml`` names :func:`evaluate_run` as its ``evaluator`` (by
``_target_``: the training stage does not import this later stage). It evaluates the trained
model on the held-out members, writes the results into the run's ``evaluation/`` folder and
logs them to the active W&B run; the training command prints ``results.summary(run_dir)``
(:func:`weightspace.evaluation.tables.summarize_evaluation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightspace.autoencoder.run import EVALUATION_DIR
from weightspace.evaluation.audit import AuditOptions, curves
from weightspace.evaluation.evaluate import evaluate_autoencoder
from weightspace.evaluation.results import EvalResults


def evaluate_run(
    model: Any,
    datamodule: Any,
    run_dir: str | Path,
    seed: int = 0,
    audit: Mapping[str, Any] | bool | None = None,
) -> EvalResults:
    """Evaluate ``model`` on ``datamodule``'s held-out members (probes against the baselines,
    reconstruction, generation and its memorization audit), save the results to
    ``run_dir/evaluation/`` and log them to W&B when a run is active.

    ``audit`` (config ``evaluator.audit``; on in ``experiment=autoencoder/demo``): True (the
    memorization audit at its default sizes), a mapping of
    :class:`~weightspace.evaluation.audit.AuditOptions` (``evaluator.audit={n_boot: 200}``),
    or False / None (no audit)."""
    opts = None
    if audit is not None and audit is not False:
        opts = AuditOptions.from_mapping(None if audit is True else audit)
    results = evaluate_autoencoder(model, datamodule, seed=seed, audit=opts)
    paths = results.save(Path(run_dir) / EVALUATION_DIR)
    _log_wandb(results, paths.get("audit_figure"))
    return results


def _log_wandb(results: EvalResults, audit_figure: Path | None = None) -> None:
    import wandb

    if wandb.run is None:
        return
    rec = results["reconstruction"].reset_index(names="model")
    wandb.log(
        {
            "eval/probes": wandb.Table(dataframe=results["probes"]),
            "eval/comparisons": wandb.Table(dataframe=results["comparisons"]),
            "eval/reconstruction": wandb.Table(dataframe=rec),
        }
    )
    wandb.run.summary.update(
        {
            f"eval/generation/{k}": v
            for k, v in results["generation"].items()
            if isinstance(v, (int, float))
        }
    )
    if results.audit_points is None:
        return
    table = wandb.Table(dataframe=curves(results.audit_points))
    logs: dict[str, Any] = {"eval/audit_curves": table}
    if audit_figure is not None:
        logs["eval/audit"] = wandb.Image(str(audit_figure))
    wandb.log(logs)
    wandb.run.summary.update(
        {f"eval/audit/{k}": v for k, v in results.audit.items() if isinstance(v, (int, float))}
    )
