"""Summarize a sweep: python scripts/summarize_sweep.py outputs/autoencoder-multirun/<time>

Gathers every job's overrides, final metrics and evaluation into one table (summary.csv and
summary.md in the sweep folder, printed as markdown) and a parallel-coordinates plot
(parallel_coordinates.png). A thin wrapper around
:func:`weightspace.evaluation.sweep.summarize_sweep`; installed also as the
``weightspace-summarize-sweep`` command.
"""

from weightspace.evaluation.sweep import cli

if __name__ == "__main__":
    cli()
