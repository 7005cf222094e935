"""Analyse zoos and write a report: python scripts/analyze.py zoo=PATH [compare_zoo=PATH] ...

or a preset that also makes its zoos: python scripts/analyze.py experiment=analysis/patterns

A thin Hydra entry point around :func:`weightspace.analysis.analyze` (conf/analyze.yaml).
"""

from weightspace.analysis import cli

if __name__ == "__main__":
    cli()
