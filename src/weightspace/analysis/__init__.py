"""Analysis and reports: the questions researchers ask about trained weights, answered with
measurements and plots (``scripts/analyze.py``, ``docs/analysis.md``).

One module per question, each holding its measures' orchestration, figures and prose:

1. :mod:`.patterns`: what the final weights of many runs share (per-layer norms against
   depth, weight distributions, spectra);
2. :mod:`.runs_differ`: why two runs differ (weight distance raw / canonical / aligned next to
   function distance; loss along the straight line between runs);
3. :mod:`.symmetry_breaking`: why initial weights are random (constant vs. random init);
4. :mod:`.weight_norm`: what w = g · v / ||v|| changes;
5. :mod:`.latent_space`: an autoencoder run's latent space (``autoencoder=RUN``): PCA / UMAP
   maps of every checkpoint's latent, training trajectories, the run's probe table (figures
   in :mod:`.latent_figures`, on :mod:`weightspace.autoencoder.run`).

Beside them, :mod:`.feature_families` (``scripts/probe_features.py``): which families of weight
features tell a hyperparameter apart, and which survive the function-preserving symmetries.

Shared by them: :mod:`.measures` (the numbers, on stacked parameters), :mod:`.cohort`
(members of a zoo analysed together), :mod:`.plotting` (the figure style and drawing
helpers), :mod:`.question` (inputs, a section opened or skipped, number formatting).
:mod:`.sections` registers the questions in report order; :mod:`.report` writes the report;
:mod:`.run` holds ``analyze(cfg)``, configs and the entry point.
"""

from weightspace.analysis.run import analyze, cli, compose_config

__all__ = ["analyze", "cli", "compose_config"]
