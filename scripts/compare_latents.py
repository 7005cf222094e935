"""Do two runs' latents read the same held-out networks equally well?

    python scripts/compare_latents.py RUN_A RUN_B [--arch 64-32-32-10]

Probes each run's learned coordinates of the same members (ridge / logistic and boosting, per
target) and sets A's against B's with a paired bootstrap over test members; a run over zoos of
several architectures is read for one of them (``--arch``, default the other run's). A thin
wrapper around :func:`weightspace.evaluation.paired.main`.
"""

from weightspace.evaluation.paired import cli

if __name__ == "__main__":
    cli()
