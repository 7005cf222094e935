"""The numbers behind the report: per-layer statistics, distances between networks and
between their functions, symmetry breaking. Pure functions of stacked parameters.

Everything takes stacked parameters (``{"layers.{l}.weight": (M, out, in), ...}``, the
effective ones unless said otherwise) and returns one value per member or per pair, so a whole
zoo is measured in a few batched calls. Computations that sum many terms run in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from weightspace.nets.forward import forward
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.tasks import Task
from weightspace.zoo.train.loop import evaluate

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
def layer_norms(params: Mapping[str, Tensor], spec: MLPSpec) -> dict[str, Tensor]:
    """Per member and layer: ``weight`` ||W_l||_F, ``bias`` ||b_l|| and ``ratio``
    ||W_l||_F / ||b_l|| (NaN where the bias is exactly zero, e.g. at a zero bias init).
    Each (M, n_layers), float64."""
    w = torch.stack(
        [
            torch.linalg.vector_norm(params[f"layers.{l}.weight"].double(), dim=(1, 2))
            for l in range(spec.n_layers)
        ],
        dim=1,
    )
    if spec.bias:
        b = torch.stack(
            [
                torch.linalg.vector_norm(params[f"layers.{l}.bias"].double(), dim=1)
                for l in range(spec.n_layers)
            ],
            dim=1,
        )
    else:
        b = torch.full_like(w, float("nan"))
    ratio = torch.where(b > 0, w / b.clamp_min(1e-300), float("nan"))
    return {"weight": w, "bias": b, "ratio": ratio}


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


def outputs(params: Mapping[str, Tensor], x: Tensor, spec: MLPSpec, chunk: int = 4096) -> Tensor:
    """Network outputs (M, B, C) on inputs (B, in), computed in chunks of inputs."""
    with torch.no_grad():
        parts = [forward(params, x[s : s + chunk], spec) for s in range(0, len(x), chunk)]
    return torch.cat(parts, 1)


# --------------------------------------------------------------------------- paths
def interpolate(
    a: Mapping[str, Tensor], b: Mapping[str, Tensor], ts: Sequence[float]
) -> dict[str, Tensor]:
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
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
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
        return values.map(lambda v: f"{column}={_fmt(v)}")
    bins = pd.qcut(values, 3, duplicates="drop")
    return bins.map(lambda iv: f"{column} in [{_fmt(iv.left)}, {_fmt(iv.right)}]").astype(str)


def _fmt(v) -> str:
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
