"""What every question module shares: the inputs the report analyses (:class:`Inputs`), the
question itself (:class:`Question`, which opens or skips its report section), figures for the
report (:func:`report_figure`) and the number formatting of the sections' prose.

A question module (:mod:`.patterns`, :mod:`.runs_differ`, :mod:`.symmetry_breaking`,
:mod:`.weight_norm`, :mod:`.latent_space`) holds ``QUESTION``, ``section(inputs, opts)`` and,
inside, a function that measures (numbers only) and one that writes the section from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from weightspace.analysis.report import Figure, Section
from weightspace.zoo.store import Zoo

if TYPE_CHECKING:
    from weightspace.autoencoder.run import Run


@dataclass
class Inputs:
    """What the sections analyse: the zoo, an optional second zoo to compare with, and an
    optional autoencoder run (loaded)."""

    zoo: Zoo | None
    compare_zoo: Zoo | None = None
    seed: int = 0
    run: Run | None = None

    @property
    def zoos(self) -> list[Zoo]:
        """The zoos given: ``zoo``, then ``compare_zoo``, each if set."""
        return [z for z in (self.zoo, self.compare_zoo) if z is not None]


@dataclass(frozen=True)
class Question:
    """One section of the report: its config key (also the section's key), title and the
    question it answers."""

    key: str
    title: str
    text: str

    def section(self) -> Section:
        return Section(key=self.key, title=self.title, question=self.text)

    def skipped(self, why: str) -> Section:
        """The section without content: its inputs are missing (``why`` says which)."""
        s = self.section()
        s.skipped = True
        s.notes.append(f"Skipped: {why}")
        return s


def report_figure(name: str, title: str, caption: str, made: tuple) -> Figure:
    """A report figure from ``(matplotlib figure, its data)``."""
    fig, data = made
    return Figure(name=name, title=title, caption=caption, figure=fig, data=data)


# --------------------------------------------------------------------------- numbers as text
def quartiles(values, digits: int = 3) -> str:
    """'median [q25, q75]' of finite values, or '–'."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "–"
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return f"{med:.{digits}g} [{q25:.{digits}g}, {q75:.{digits}g}]"


def num(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, or '–' (None, NaN, infinite)."""
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal, or '–'."""
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def arr(x) -> np.ndarray:
    """Figure data (nested lists, None for NaN) as a float array of the same shape."""
    return np.asarray([np.nan if v is None else v for v in np.ravel(x)], dtype=float).reshape(
        np.shape(x)
    )
