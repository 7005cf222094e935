"""Which families of weight features tell a hyperparameter apart, and which survive the
function-preserving symmetries.

``scripts/probe_features.py ZOO --target init`` probes each family on every checkpoint of a
zoo (members grouped, so one member's checkpoints never straddle train and test) and prints
a table. The families:

- ``stats``: the per-layer statistics (:mod:`weightspace.features.statistics`);
- ``spectra``: every weight matrix's log singular values;
- ``stats (canonical)``, ``spectra (canonical)``: the same after putting each network in the
  canonical form of its unit scales (relu: unit incoming norms) or signs (tanh): what an
  encoder invariant to those symmetries can see of them;
- ``product spectra``: the singular values of the layer products ``W_l ... W_0`` (relu
  rescaling leaves the whole product's unchanged, not the prefixes' that end at a hidden
  layer), and ``product spectra (canonical)``;
- ``balance``: per hidden layer, quantiles of ``log(|incoming| / |outgoing|)`` over the units.
  Gradient flow keeps ``|incoming|^2 - |outgoing|^2`` of every relu unit constant (Du et al.
  2018), so it keeps the init's balance; a positive rescaling of a unit changes it, so no
  rescaling-invariant reading has it;
- ``angles``: per hidden layer and side, quantiles of ``|cos|`` between two units' incoming
  (outgoing) weight vectors in the canonical frame — what
  :class:`~weightspace.autoencoder.blocks.GramReadout` reads, with learned maps in place of
  quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.autoencoder.blocks import GramReadout
from weightspace.errors import ConfigError
from weightspace.features.spectra import product_spectrum_torch, spectrum_torch
from weightspace.features.statistics import layer_statistics_torch
from weightspace.nets.spec import MLPSpec, Params, layers
from weightspace.symmetry import canonical_unit_frame

__all__ = ["FAMILIES", "feature_families", "probe_families"]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
FAMILIES = (
    "stats",
    "spectra",
    "stats (canonical)",
    "spectra (canonical)",
    "product spectra",
    "product spectra (canonical)",
    "balance",
    "angles",
)
# Combinations worth a row: everything a symmetry-invariant reading has, and the raw best.
COMBINED = {
    "canonical: stats + spectra + products": (
        "stats (canonical)",
        "spectra (canonical)",
        "product spectra (canonical)",
    ),
    "canonical: stats + angles": ("stats (canonical)", "angles"),
}


def _quantiles(x: Tensor) -> Tensor:
    """``(N, k) -> (N, len(QUANTILES))``."""
    return torch.quantile(x, torch.tensor(QUANTILES, dtype=x.dtype), dim=1).T


def balance(params: Params, spec: MLPSpec) -> Tensor:
    """Per hidden layer, quantiles over its units of ``log(|incoming| / |outgoing|)``."""
    out = []
    for incoming, outgoing in GramReadout.unit_vectors(list(layers(params, spec))):
        ratio = incoming.norm(dim=-1) / outgoing.norm(dim=-1)
        out.append(_quantiles(ratio.clamp_min(1e-12).log()))
    return torch.cat(out, 1)


def angles(params: Params, spec: MLPSpec) -> Tensor:
    """Per hidden layer and side, quantiles of ``|cos|`` between two distinct units' weight
    vectors, and the log of their mean square."""
    out = []
    for sides in GramReadout.unit_vectors(list(layers(params, spec))):
        for vecs in sides:
            g = GramReadout.cosines(vecs)
            off = g[:, ~torch.eye(g.shape[1], dtype=torch.bool)]
            out += [_quantiles(off.abs()), off.square().mean(1, keepdim=True).log()]
    return torch.cat(out, 1)


def feature_families(params: Params, spec: MLPSpec) -> dict[str, Tensor]:
    """``{family: (N, k)}`` of stacked networks (float64)."""
    params = {k: v.double() for k, v in params.items()}
    canon = canonical_unit_frame(params, spec)
    return {
        "stats": layer_statistics_torch(params, spec),
        "spectra": spectrum_torch(params, spec),
        "stats (canonical)": layer_statistics_torch(canon, spec),
        "spectra (canonical)": spectrum_torch(canon, spec),
        "product spectra": product_spectrum_torch(params, spec),
        "product spectra (canonical)": product_spectrum_torch(canon, spec),
        "balance": balance(params, spec),
        "angles": angles(canon, spec),
    }


def probe_families(
    zoo, target: str, epochs: Sequence[int] | None = None, folds: int = 5, log: bool = False
) -> pd.DataFrame:
    """Cross-validated probes of ``target`` (a column of the zoo's members) from each feature
    family on every checkpoint of ``epochs`` (default all): logistic accuracy for a label,
    ridge R² for a number (of its log10 with ``log``); folds grouped by member. One row per
    family (and the combinations in ``COMBINED``): ``family, features, score, metric``."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    members = zoo.members
    if not 2 <= folds <= len(members):
        raise ConfigError(f"--folds: {folds}, must be in [2, {len(members)}] (the zoo's members)")
    if target not in members.columns:
        raise ConfigError(
            f"--target: '{target}' is not a column of {zoo.root}/members "
            f"(choose from {', '.join(members.columns)})"
        )
    y = members[target]
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    if numeric and log:
        if (y <= 0).any():
            raise ConfigError(f"--log: '{target}' has values <= 0")
        y = np.log10(y)
    y = y.to_numpy() if numeric else y.astype("category").cat.codes.to_numpy()
    epochs = list(zoo.epochs if epochs is None else epochs)
    missing = sorted(set(epochs) - set(zoo.epochs))
    if missing:
        raise ConfigError(f"--epochs: {zoo.root} has no checkpoint at epoch(s) {missing}")
    rows: dict[str, list[Tensor]] = {}
    for epoch in epochs:
        for name, x in feature_families(zoo.weights(epoch), zoo.spec).items():
            rows.setdefault(name, []).append(x)
    feats = {k: torch.cat(v).nan_to_num().numpy() for k, v in rows.items()}
    for name, parts in COMBINED.items():
        feats[name] = np.concatenate([feats[p] for p in parts], 1)
    ys = np.tile(y, len(epochs))
    groups = np.tile(np.arange(len(members)), len(epochs))
    if numeric:
        model, metric = RidgeCV(alphas=np.logspace(-3, 3, 13)), "r2"
    else:
        model, metric = LogisticRegression(max_iter=3000), "accuracy"
    out = []
    for name, x in feats.items():
        scores = cross_val_score(
            make_pipeline(StandardScaler(), model),
            x,
            ys,
            cv=GroupKFold(folds),
            groups=groups,
            scoring=metric,
        )
        out.append(
            {"family": name, "features": x.shape[1], "score": scores.mean(), "metric": metric}
        )
    return pd.DataFrame(out)
