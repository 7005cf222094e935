"""Generate a zoo of trained MLPs: python scripts/generate_zoo.py task=digits zoo.size=2000 ...

A thin Hydra entry point around :func:`weightspace.zoo.generate.generate` (conf/generate.yaml);
installed also as the ``weightspace-generate`` command.
"""

from weightspace.zoo.generate import cli

if __name__ == "__main__":
    cli()
