"""Write a derived zoo in canonical form or aligned to one frame:

    python scripts/canonicalize_zoo.py parent=zoos/digits transform.kind=merge_many

A thin Hydra entry point around :func:`weightspace.symmetry.derive.derive`
(conf/canonicalize.yaml); installed also as the ``weightspace-canonicalize`` command.
"""

from weightspace.symmetry.derive import cli

if __name__ == "__main__":
    cli()
