"""The report's sections in order: one question module each, registered here by config key.

A new section is a question module (``QUESTION``, ``section(inputs, opts)``; see
:mod:`.question`) added to ``MODULES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from weightspace.analysis import (
    inr_signals,
    latent_space,
    patterns,
    runs_differ,
    symmetry_breaking,
    weight_norm,
)
from weightspace.analysis.question import Inputs
from weightspace.analysis.report import Section

MODULES = (patterns, runs_differ, symmetry_breaking, weight_norm, latent_space, inr_signals)
# config key -> (title, question)
QUESTIONS = {m.QUESTION.key: (m.QUESTION.title, m.QUESTION.text) for m in MODULES}
SECTIONS: dict[str, Callable[[Inputs, Mapping[str, Any]], Section]] = {
    m.QUESTION.key: m.section for m in MODULES
}


def skipped(key: str, why: str) -> Section:
    """Section ``key`` without content: ``why`` says which input is missing."""
    return next(m.QUESTION for m in MODULES if m.QUESTION.key == key).skipped(why)


__all__ = ["MODULES", "QUESTIONS", "SECTIONS", "Inputs", "skipped"]
