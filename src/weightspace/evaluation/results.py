"""The results of an evaluation, and the one place that knows its folder's layout.

:class:`EvalResults` holds what :func:`~weightspace.evaluation.evaluate.evaluate_autoencoder`
returns. :meth:`EvalResults.save` writes a folder of

- ``probes.csv``          every probe score (:data:`~weightspace.evaluation.probes.PROBE_COLUMNS`)
- ``comparisons.csv``     the latent's (and the learned coordinates') probes against the
                          baselines' (paired bootstrap), column ``representation`` first
- ``reconstruction.csv``  a row per model (and per checkpoint epoch), column ``model`` first
- ``table.md``            the probe table for people (never read back)
- ``audit.csv``           with a memorization audit only: a row per audited network
                          (:data:`~weightspace.evaluation.audit.POINT_COLUMNS`), and
- ``audit.png``           its figure (:func:`~weightspace.evaluation.audit.draw_audit`)
- ``signals.npz``         with an INR zoo only: a few held-out signals as fitted, rendered by
                          the field decoder (if any), decoded and sampled
                          (:func:`~weightspace.evaluation.inr.signal_grid`), and
- ``signals.png``         their figure (:func:`~weightspace.evaluation.inr.draw_signal_grid`)
- ``results.json``        everything above but the table, plus ``info`` and ``generation``
                          (and ``audit``'s summary, with an audit; NaN / inf written as
                          null); written last

and :meth:`EvalResults.load` reads one back from the CSVs and the JSON. Nothing else in the
package names these files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightspace.evaluation.compare import COMPARISON_COLUMNS
from weightspace.evaluation.tables import format_table, probe_summary, summarize_evaluation

FILES = {
    "probes": "probes.csv",
    "comparisons": "comparisons.csv",
    "reconstruction": "reconstruction.csv",
    "table": "table.md",
    "json": "results.json",
}
AUDIT_FILES = {"audit": "audit.csv", "audit_figure": "audit.png"}  # written with an audit
SIGNAL_FILES = {"signals": "signals.npz", "signals_figure": "signals.png"}  # INR zoos
# Floats read back exactly as written: pandas 3 does by default (and deprecates the option).
_EXACT = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
# The names the results read by, as a mapping (in the order of the former results dict).
KEYS = ("probes", "table", "comparisons", "reconstruction", "generation", "info")


def _no_comparisons() -> pd.DataFrame:
    return pd.DataFrame(columns=COMPARISON_COLUMNS)


@dataclass(eq=False)
class EvalResults(Mapping[str, Any]):
    """An evaluation's results.

    ``probes``: one row per probe score (:func:`~weightspace.evaluation.probes.probe_table`);
    ``comparisons``: :func:`~weightspace.evaluation.compare.compare_probes`;
    ``reconstruction``: a row per model (autoencoder, pca, then per checkpoint epoch), see
    :func:`~weightspace.evaluation.reconstruction.reconstruction_table`; ``generation`` and
    ``info``: plain values. ``table`` is the probe table in markdown, made from ``probes``.
    ``audit`` / ``audit_points``: the memorization audit's summary and its networks
    (:func:`~weightspace.evaluation.audit.run_audit`; ``audit_points`` None without one).

    Also read as a mapping with those keys (``results["probes"]``), as the results were a
    dict before.
    """

    probes: pd.DataFrame
    reconstruction: pd.DataFrame
    comparisons: pd.DataFrame = field(default_factory=_no_comparisons)
    generation: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    audit_points: pd.DataFrame | None = None
    signals: dict[str, np.ndarray] | None = None  # INR zoos: evaluation.inr.signal_grid

    @property
    def table(self) -> str:
        """The probe table for people (:func:`~weightspace.evaluation.tables.format_table`)."""
        return format_table(self.probes)

    def summary(self, run_dir: str | Path) -> str:
        """What the training command prints: the tables and headline numbers of a run's
        evaluation (:func:`~weightspace.evaluation.tables.summarize_evaluation`)."""
        return summarize_evaluation(self, run_dir)

    def probe_summary(self) -> pd.DataFrame:
        """The cells of :attr:`table` as a DataFrame of strings (no markdown parsed)."""
        return probe_summary(self.probes)

    # ---- read as a mapping
    def __getitem__(self, key: str) -> Any:
        if key not in KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(KEYS)

    def __len__(self) -> int:
        return len(KEYS)

    @classmethod
    def from_mapping(cls, results: Mapping[str, Any]) -> EvalResults:
        """Results from a mapping with :data:`KEYS` (``table`` ignored: made from probes)."""
        if isinstance(results, EvalResults):
            return results
        return cls(
            probes=results["probes"],
            reconstruction=results["reconstruction"],
            comparisons=results.get("comparisons", _no_comparisons()),
            generation=results.get("generation", {}),
            info=results.get("info", {}),
        )

    # ---- the folder
    @staticmethod
    def paths(folder: str | Path) -> dict[str, Path]:
        """The files of an evaluation folder, by name (``probes``, ``comparisons``,
        ``reconstruction``, ``table``, ``json``)."""
        root = Path(folder)
        return {name: root / file for name, file in FILES.items()}

    @staticmethod
    def is_saved(folder: str | Path) -> bool:
        """Whether ``folder`` holds saved results (``results.json``, written last)."""
        return EvalResults.paths(folder)["json"].is_file()

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write the results into ``folder`` (created if needed); returns the paths by name
        (with ``audit`` and ``audit_figure`` when there is an audit)."""
        paths = self.paths(folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.probes.to_csv(paths["probes"], index=False)
        self.comparisons.to_csv(paths["comparisons"], index=False)
        self.reconstruction.to_csv(paths["reconstruction"], index_label="model")
        paths["table"].write_text(self.table + "\n")
        rec = self.reconstruction
        payload = {
            "info": self.info,
            "reconstruction": {str(k): row for k, row in rec.to_dict(orient="index").items()},
            "generation": self.generation,
            "probes": self.probes.to_dict(orient="records"),
            "comparisons": self.comparisons.to_dict(orient="records"),
        }
        if self.audit_points is not None:
            from weightspace.evaluation.audit import draw_audit

            root = Path(folder)
            paths |= {name: root / file for name, file in AUDIT_FILES.items()}
            self.audit_points.to_csv(paths["audit"], index=False)
            fig, _ = draw_audit(self.audit_points, self.audit)
            fig.savefig(paths["audit_figure"], dpi=120, metadata={"Software": None})
            payload["audit"] = self.audit
        if self.signals is not None:
            import matplotlib.pyplot as plt

            from weightspace.evaluation.inr import draw_signal_grid

            root = Path(folder)
            paths |= {name: root / file for name, file in SIGNAL_FILES.items()}
            np.savez(paths["signals"], **self.signals)
            fig, _ = draw_signal_grid(self.signals)
            fig.savefig(paths["signals_figure"], dpi=120, metadata={"Software": None})
            plt.close(fig)
        paths["json"].write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False))
        return paths

    @classmethod
    def load(cls, folder: str | Path) -> EvalResults:
        """Read results saved by :meth:`save`: the tables from the CSVs (floats exactly as
        written), ``info`` and ``generation`` from the JSON (null read back as NaN).
        ``comparisons.csv`` may be missing (older runs): no comparisons; one without column
        ``representation`` (older runs: only the latent was compared) reads as the latent's."""
        paths = cls.paths(folder)
        if not paths["json"].is_file():
            raise FileNotFoundError(f"evaluation: no results in {folder} ({FILES['json']})")
        data = json.loads(paths["json"].read_text())
        probes = pd.read_csv(paths["probes"], dtype={"note": str}, **_EXACT)
        probes["note"] = probes["note"].fillna("")  # written empty, read as NaN
        reconstruction = pd.read_csv(paths["reconstruction"], index_col="model", **_EXACT)
        reconstruction.index.name = None
        comparisons = (
            pd.read_csv(paths["comparisons"], **_EXACT)
            if paths["comparisons"].is_file()
            else _no_comparisons()
        )
        if "representation" not in comparisons:
            comparisons.insert(0, "representation", "latent")
        audit_csv = Path(folder) / AUDIT_FILES["audit"]
        points = pd.read_csv(audit_csv, **_EXACT) if audit_csv.is_file() else None
        signals_npz = Path(folder) / SIGNAL_FILES["signals"]
        signals = None
        if signals_npz.is_file():
            with np.load(signals_npz) as npz:
                signals = {k: npz[k] for k in npz.files}
        return cls(
            probes=probes,
            reconstruction=reconstruction,
            comparisons=comparisons,
            generation=_nan_for_null(data.get("generation") or {}),
            info=_nan_for_null(data.get("info") or {}),
            audit=_nan_for_null(data.get("audit") or {}),
            audit_points=points,
            signals=signals,
        )


def write_results(results: Mapping[str, Any], folder: str | Path) -> dict[str, Path]:
    """:meth:`EvalResults.save` of ``results`` (an :class:`EvalResults` or a mapping with its
    keys) into ``folder``; returns the paths by name."""
    return EvalResults.from_mapping(results).save(folder)


def _nan_for_null(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: float("nan") if v is None else v for k, v in values.items()}


def _json_safe(x: Any) -> Any:
    """Plain JSON values: NaN / inf -> None, numpy scalars and arrays -> Python."""
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, pd.DataFrame):
        return _json_safe(x.to_dict(orient="records"))
    return x
