"""Write networks trained elsewhere as a zoo:

    python scripts/import_zoo.py source=runs/ activation=relu task=digits table=runs/metrics.csv

A thin Hydra entry point around :func:`weightspace.zoo.importer.import_zoo`
(conf/import_zoo.yaml); installed also as the ``weightspace-import`` command.
"""

from weightspace.zoo.importer import cli

if __name__ == "__main__":
    cli()
