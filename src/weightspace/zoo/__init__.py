"""Zoos: the tasks members learn (:mod:`.tasks`, :mod:`.idx`), their hyperparameters
(:mod:`.population`) and initialization (:mod:`.init`), training many members at once
(:mod:`.train`), the on-disk format (:mod:`.store` reads, :mod:`.writer` writes,
:mod:`.manifest` checks, :mod:`.files`, :mod:`.collection`) and the generator entry point
(:mod:`.generate`).

``from weightspace.zoo import Zoo`` opens a zoo on disk.
"""

from weightspace.zoo.store import Zoo
from weightspace.zoo.writer import ZooWriter

__all__ = ["Zoo", "ZooWriter"]
