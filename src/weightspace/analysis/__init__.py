"""Analysis and reports: the questions researchers ask about trained weights, answered with
measurements and plots (``scripts/analyze.py``, ``docs/analysis.md``).

1. ``patterns``: what the final weights of many runs share (per-layer norms against depth,
   weight distributions, spectra);
2. ``runs_differ``: why two runs differ (weight distance raw / canonical / aligned next to
   function distance; loss along the straight line between runs);
3. ``symmetry_breaking``: why initial weights are random (constant vs. random init);
4. ``weight_norm``: what w = g · v / ||v|| changes;
5. ``latent``: an autoencoder run's latent space (``autoencoder=RUN``): PCA / UMAP maps of
   every checkpoint's latent, training trajectories, the run's probe table (:mod:`.latent`,
   on :mod:`weightspace.latents`).

A new section is a function in :mod:`.sections` registered in ``SECTIONS``.

Modules: :mod:`.measures` (the numbers, on stacked parameters), :mod:`.cohort` (members of a
zoo analysed together), :mod:`.figures` (one function per figure, returning
``(figure, data)``), :mod:`.sections` (figures + text per question), :mod:`.run`
(``analyze(cfg)``, configs, the entry point); :mod:`weightspace.analysis.report` writes the report.
"""

from weightspace.analysis.run import analyze, cli, compose_config

__all__ = ["analyze", "cli", "compose_config"]
