"""The numbers behind the report: per-layer statistics, distances between networks and
between their functions, symmetry breaking. Pure functions of stacked parameters and of the
members table; the question modules orchestrate them over cohorts.

Everything takes stacked parameters (``{"layers.{l}.weight": (M, out, in), ...}``, the
effective ones unless said otherwise) and returns one value per member or per pair, so a whole
zoo is measured in a few batched calls. Computations that sum many terms run in float64.
:func:`as_lists` turns measured values into the plain lists a report's ``figures.json`` holds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from weightspace.nets.forward import forward
from weightspace.nets.metrics import evaluate
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name
from weightspace.zoo.tasks import Task

# Members-table columns that say *which run* a member is, not *how* it was trained: members
# equal in every other column are repeated runs of one configuration.
RUN_COLUMNS = (
    "member_id",
    "seed",
    "data_seed",
    "shard",
    "shard_row",
    "diverged",
    "diverged_epoch",
)


# --------------------------------------------------------------------------- per layer
def layer_norms(params: Params, spec: MLPSpec) -> dict[str, Tensor]:
    """Per member and layer: ``weight`` ||W_l||_F, ``bias`` ||b_l|| and ``ratio``
    ||W_l||_F / ||b_l|| (NaN where the bias is exactly zero, e.g. at a zero bias init).
    Each (M, n_layers), float64."""
    w = torch.stack(
        [
            torch.linalg.vector_norm(params[weight_name(l)].double(), dim=(1, 2))
            for l in range(spec.n_layers)
        ],
        dim=1,
    )
    if spec.bias:
        b = torch.stack(
            [
                torch.linalg.vector_norm(params[bias_name(l)].double(), dim=1)
                for l in range(spec.n_layers)
            ],
            dim=1,
        )
    else:
        b = torch.full_like(w, float("nan"))
    ratio = torch.where(b > 0, w / b.clamp_min(1e-300), float("nan"))
    return {"weight": w, "bias": b, "ratio": ratio}


def norm_profile(params: Params, spec: MLPSpec) -> dict[str, dict[str, np.ndarray]]:
    """Median and IQR over the members of :func:`layer_norms`: kind (weight, bias, ratio)
    -> q25 / median / q75, each (n_layers,)."""
    return {k: quantiles(v, 0) for k, v in layer_norms(params, spec).items()}


def singular_values(w: Tensor) -> Tensor:
    """Singular values, largest first: (M, out, in) -> (M, min(out, in)), float64."""
    return torch.linalg.svdvals(w.double())


def effective_rank(w: Tensor) -> Tensor:
    """exp of the entropy of the normalized singular values (Roy & Vetterli, 2007): (M,).

    1 for a rank-one matrix, min(out, in) when all singular values are equal, 0 for a zero
    matrix."""
    s = singular_values(w)
    total = s.sum(-1, keepdim=True)
    p = torch.where(total > 0, s / total.clamp_min(1e-300), 0.0)
    entropy = -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0.0)).sum(-1)
    return torch.where(total[:, 0] > 0, entropy.exp(), 0.0)


def distinct_units(
    weight: Tensor, bias: Tensor | None = None, tolerance: float = 1e-5
) -> np.ndarray:
    """Number of distinct units of a layer per member: (M,) int.

    Unit ``i`` is the row ``[W[i], b[i]]`` of incoming weights and bias. Two units count as
    equal when ``||r_i - r_j|| <= tolerance * max(||r_i||, ||r_j||)`` (relative), and equality
    is closed transitively (connected components), so the count does not depend on the order
    of the units. Identical units receive identical gradients and stay identical: a layer
    initialized with one constant keeps one distinct unit.
    """
    rows = weight.double()
    if bias is not None:
        rows = torch.cat([rows, bias.double().unsqueeze(-1)], dim=-1)  # (M, n, in + 1)
    # Exact differences (no |a|^2 + |b|^2 - 2ab expansion): identical rows give exactly 0.
    d = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")  # (M, n, n)
    norm = torch.linalg.vector_norm(rows, dim=-1)  # (M, n)
    scale = torch.maximum(norm.unsqueeze(2), norm.unsqueeze(1))
    same = (d <= tolerance * scale).cpu().numpy()
    return np.array([connected_components(csr_matrix(s), directed=False)[0] for s in same])


# --------------------------------------------------------------------------- functions
def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al., 2019) of paired representations: (P, B, p), (P, B, q)
    -> (P,).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``:
    1 for identical representations, invariant to permuting (and orthogonally transforming,
    and isotropically scaling) either one's units. NaN when one of them is constant over
    the batch (every unit dead).
    """
    xc = (x - x.mean(1, keepdim=True)).double()
    yc = (y - y.mean(1, keepdim=True)).double()
    cross = (yc.transpose(1, 2) @ xc).pow(2).sum((1, 2))
    xx = torch.linalg.matrix_norm(xc.transpose(1, 2) @ xc)
    yy = torch.linalg.matrix_norm(yc.transpose(1, 2) @ yc)
    den = xx * yy
    return torch.where(den > 0, cross / den.clamp_min(1e-300), float("nan"))


def function_distance(out_a: Tensor, out_b: Tensor, classification: bool) -> dict[str, Tensor]:
    """How differently two networks behave on the same inputs; outputs (P, B, C) -> (P,) each.

    ``disagreement``: fraction of inputs with different predicted classes (NaN for
    regression); ``logit_l2``: mean L2 distance of the outputs; ``softmax_l2``: mean L2
    distance of the predicted class probabilities (NaN for regression).
    """
    a, b = out_a.double(), out_b.double()
    logit = torch.linalg.vector_norm(a - b, dim=-1).mean(1)
    if not classification:
        nan = torch.full_like(logit, float("nan"))
        return {"disagreement": nan, "logit_l2": logit, "softmax_l2": nan.clone()}
    disagree = (a.argmax(-1) != b.argmax(-1)).double().mean(1)
    soft = torch.linalg.vector_norm(a.softmax(-1) - b.softmax(-1), dim=-1).mean(1)
    return {"disagreement": disagree, "logit_l2": logit, "softmax_l2": soft}


def outputs(params: Params, x: Tensor, spec: MLPSpec, chunk: int = 4096) -> Tensor:
    """Network outputs (M, B, C) on inputs (B, in), computed in chunks of inputs."""
    with torch.no_grad():
        parts = [forward(params, x[s : s + chunk], spec) for s in range(0, len(x), chunk)]
    return torch.cat(parts, 1)


# --------------------------------------------------------------------------- paths
def interpolate(a: Params, b: Params, ts: Sequence[float]) -> Params:
    """Networks on the straight lines between pairs: (P, ...) and (P, ...) -> (P * T, ...),
    pair-major (network ``p * T + i`` is ``(1 - t_i) a_p + t_i b_p``)."""
    t = torch.as_tensor(list(ts), dtype=torch.float64)
    out = {}
    for k in a:
        xa, xb = a[k].double(), b[k].double()
        shape = (len(t),) + (1,) * (xa.dim() - 1)
        path = (1 - t.view(shape)).unsqueeze(0) * xa.unsqueeze(1) + t.view(shape).unsqueeze(
            0
        ) * xb.unsqueeze(1)  # (P, T, ...)
        out[k] = path.reshape(-1, *xa.shape[1:]).to(a[k].dtype)
    return out


def path_metrics(
    a: Params,
    b: Params,
    spec: MLPSpec,
    task: Task,
    x: Tensor,
    y: Tensor,
    ts: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy along the lines between pairs on (x, y): two (P, T)."""
    n_pairs = next(iter(a.values())).shape[0]
    loss, acc = evaluate(interpolate(a, b, ts), spec, x, y, task)
    return loss.view(n_pairs, -1).double(), acc.view(n_pairs, -1).double()


def loss_barrier(loss: Tensor, ts: Sequence[float]) -> Tensor:
    """Largest excess of the loss along a path over the line between its end losses:
    ``max_t L(t) - ((1 - t) L(0) + t L(1))``. (P, T) -> (P,); 0 for a convex path."""
    t = torch.as_tensor(list(ts), dtype=loss.dtype)
    chord = (1 - t) * loss[:, :1] + t * loss[:, -1:]
    return (loss - chord).amax(1)


# --------------------------------------------------------------------------- members
def run_groups(members: pd.DataFrame) -> list[np.ndarray]:
    """Member ids grouped by everything but the run (seed, data order): each group holds
    repeated runs of one configuration. Largest group first."""
    cols = [c for c in members.columns if c not in RUN_COLUMNS]
    if not cols:
        return [members["member_id"].to_numpy()]
    groups = members.groupby(cols, dropna=False, sort=False)["member_id"]
    out = [g.to_numpy() for _, g in groups]
    return sorted(out, key=len, reverse=True)


def varying_columns(members: pd.DataFrame) -> list[str]:
    """Hyperparameter columns whose value differs between members (runs excluded)."""
    cols = [c for c in members.columns if c not in RUN_COLUMNS]
    return [c for c in cols if members[c].nunique(dropna=False) > 1]


def group_labels(members: pd.DataFrame, column: str, max_groups: int = 6) -> pd.Series:
    """A readable group label per member for one hyperparameter: its value, or, for a
    numeric column with more than ``max_groups`` values (a sampled distribution), its
    quantile bin (three bins)."""
    values = members[column]
    if values.nunique() <= max_groups or not pd.api.types.is_numeric_dtype(values):
        return values.map(lambda v: f"{column}={format_value(v)}")
    bins = pd.qcut(values, 3, duplicates="drop")
    return bins.map(
        lambda iv: f"{column} in [{format_value(iv.left)}, {format_value(iv.right)}]"
    ).astype(str)


def group_column(members: pd.DataFrame, column: str | None = None) -> str | None:
    """The hyperparameter to group members by: ``column``, else the first one that varies."""
    varying = varying_columns(members)
    if column is not None:
        if column not in members.columns:
            raise KeyError(column)
        return column
    return varying[0] if varying else None


def natural_key(label: str):
    """Sort key of a group label: 'lr=0.01' < 'lr=0.1' numerically when the value is a number."""
    value = label.split("=", 1)[-1].split(" ")[-1].strip("[]")
    try:
        return (0, float(value), label)
    except ValueError:
        return (1, 0.0, label)


def format_value(v) -> str:
    """A hyperparameter value for a label: floats to 3 significant digits."""
    if isinstance(v, float | np.floating):
        return f"{float(v):.3g}"
    return str(v)


def quantiles(x: Tensor | np.ndarray, dim: int = 0) -> dict[str, np.ndarray]:
    """Median and interquartile range along ``dim``, ignoring NaN: arrays keyed q25, median,
    q75 (NaN where a slice is all NaN)."""
    a = np.asarray(x.cpu().numpy() if isinstance(x, Tensor) else x, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN is the answer
        q = np.nanquantile(a, [0.25, 0.5, 0.75], axis=dim)
    return {"q25": q[0], "median": q[1], "q75": q[2]}


def as_lists(x: Any) -> Any:
    """numpy / torch values as plain lists and floats (NaN kept; the report makes it null)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64).tolist() if x.dtype.kind == "f" else x.tolist()
    if isinstance(x, dict):
        return {k: as_lists(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [as_lists(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
