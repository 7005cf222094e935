"""The evaluation at the end of an autoencoder's training, and how its results read in print.

``conf/train_autoencoder.yaml`` names :func:`evaluate_run` as its ``evaluator`` (by
``_target_``: the training stage does not import this later stage). It evaluates the trained
model on the held-out members, writes the results into the run's ``evaluation/`` folder and
logs them to the active W&B run; the training command prints ``results.summary(run_dir)``
(:func:`weightspace.evaluation.tables.summarize_evaluation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weightspace.autoencoder.run import EVALUATION_DIR
from weightspace.evaluation.evaluate import evaluate_autoencoder
from weightspace.evaluation.results import EvalResults


def evaluate_run(model: Any, datamodule: Any, run_dir: str | Path, seed: int = 0) -> EvalResults:
    """Evaluate ``model`` on ``datamodule``'s held-out members (probes against the baselines,
    reconstruction, generation), save the results to ``run_dir/evaluation/`` and log them to
    W&B when a run is active."""
    results = evaluate_autoencoder(model, datamodule, seed=seed)
    results.save(Path(run_dir) / EVALUATION_DIR)
    _log_wandb(results)
    return results


def _log_wandb(results: EvalResults) -> None:
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
