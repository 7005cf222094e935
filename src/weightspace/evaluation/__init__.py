"""Evaluation of a weight-space autoencoder on held-out members (DESIGN.md, step 6).

- :mod:`~weightspace.evaluation.evaluate`: :func:`evaluate_autoencoder`, the orchestration;
- :mod:`~weightspace.evaluation.splits`: a split's checkpoints in memory, the probe targets;
- :mod:`~weightspace.evaluation.probes`: ridge / logistic / boosting probes, ``probe_table``;
- :mod:`~weightspace.evaluation.compare`: the latent, and the encoder's own coordinates, against
  the baselines (paired bootstrap);
- :mod:`~weightspace.evaluation.reconstruction`: decoded networks on the task, per-tensor R²;
- :mod:`~weightspace.evaluation.sampling`: latent density, sampling, generation metrics;
- :mod:`~weightspace.evaluation.scores`: R², Kendall's tau, accuracy, quartiles;
- :mod:`~weightspace.evaluation.results`: :class:`EvalResults`, the only code that knows the
  evaluation folder's files (save / load);
- :mod:`~weightspace.evaluation.tables`: the markdown tables for people;
- :mod:`~weightspace.evaluation.sweep`: one table and plot of an autoencoder sweep.

``from weightspace.evaluation import evaluate_autoencoder, EvalResults``; everything else
from its module.
"""

from weightspace.evaluation.evaluate import evaluate_autoencoder
from weightspace.evaluation.results import EvalResults

__all__ = ["EvalResults", "evaluate_autoencoder"]
