"""The model's options that arrive as plain values and what they mean.

- :class:`FeatureUse`: how the model uses the hand-made invariant features (one flat dict in
  the hyperparameters).
- Encoders and decoders from their configs (:func:`part_factory`): ``_target_`` (a class in
  weightspace) + options, a plain dict as Hydra composes it from ``conf/encoder/``
  or ``decoder/`` and as the model saves it among its hyperparameters::

      {"_target_": "weightspace.autoencoder.encoders.MLPEncoder", "_partial_": True,
       "kind": "mlp", "hidden": [512, 256], ...}

  ``kind`` is only the part's label (run names, reports), not an argument. The model calls
  the partial with what only it knows at run time (the spec, the latent width, the number of
  probe inputs).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hydra.errors import HydraException
from hydra.utils import get_class, instantiate
from torch import nn

from weightspace.errors import ConfigError
from weightspace.features import FeatureSpec

__all__ = ["DEFAULT_DECODER", "DEFAULT_ENCODER", "FeatureUse", "part_factory", "part_kind"]

DEFAULT_ENCODER = {"_target_": "weightspace.autoencoder.encoders.MLPEncoder", "kind": "mlp"}
DEFAULT_DECODER = {"_target_": "weightspace.autoencoder.decoders.MLPDecoder", "kind": "mlp"}
FEATURE_INPUTS = (None, "add", "concat")


@dataclass(frozen=True)
class FeatureUse:
    """How the model uses the hand-made invariant features (:mod:`weightspace.features`).

    - ``spec``: which features (:class:`~weightspace.features.FeatureSpec`): the per-layer
      statistics (Unterthiner et al. 2020) always, then as ``spectrum`` asks the log singular
      values of every weight matrix (the init scheme shows in a spectrum, an orthogonal
      matrix's is flat, more than in any quantile), as ``products`` asks those of the layer
      products W_l..W_0 (how far training moved the end-to-end maps from a product of random
      matrices), as ``function`` asks the function features on the probe inputs with their
      labels (output scale and spread, confidence, entropy, margin, loss, gradient norm: how
      the network behaves where weights alone confuse a large learning rate with a long
      training).
    - ``input``: how the model reads them (sorting-based features an MLP or attention cannot
      easily compute): ``None`` not at all; ``"add"`` (or ``True``) a linear map of them is
      added to the encoder's latent; ``"concat"`` they become more coordinates of the latent,
      after the encoder's ``latent_dim`` (so the latent is ``latent_dim + n_features`` wide,
      the decoder reads both, and the encoder is free to learn what the features miss).
    - ``weight``: a linear head on the latent must predict them (standardized), so the latent
      carries the permutation-invariant summary that predicts a network's properties along
      with what reconstruction needs; the loss term ``stats``. 0 turns it off.
    - ``whiten``: ``ε > 0`` measures the head's error in the features' principal directions,
      each over its variance plus ``ε`` (in units of the average standardized feature's
      variance, 1): correlated features make a few directions hold nearly all the variance
      (on the demo zoo 5 of 171 hold 92%), a plain MSE then fits those and leaves the rest,
      where a hyperparameter like the init scheme may live (docs/results.md). ``ε`` keeps
      directions of almost no variance (noise, duplicate features) from counting as much.
      0 (the default): the plain MSE.
    - ``origin``: a second linear head on the latent must predict the features of the
      member's *first* checkpoint in the batch — its init, when the zoo saved epoch 0 and
      ``data.group_by_member`` keeps a member's checkpoints together — from every checkpoint
      of it (the loss term ``origin``; 0 turns it off). No label is read: the start is part
      of the zoo. What a network started from survives training only in small directions of
      its own features (docs/results.md), which a head on its own features fits last.

    In the hyperparameters as one flat plain dict (:meth:`to_dict`):
    ``{"input", "weight", "spectrum", "products", "function"}``, and ``"whiten"``,
    ``"origin"`` when > 0.
    """

    spec: FeatureSpec = field(default_factory=FeatureSpec)
    input: str | None = None
    weight: float = 0.0
    whiten: float = 0.0
    origin: float = 0.0

    @property
    def used(self) -> bool:
        """Whether the model computes the features at all (and needs their mean and std)."""
        return self.input is not None or self.weight > 0 or self.origin > 0

    def to_dict(self) -> dict[str, Any]:
        # whiten and origin only when on: earlier runs' dicts unchanged
        extra = {k: v for k, v in (("whiten", self.whiten), ("origin", self.origin)) if v}
        return {"input": self.input, "weight": self.weight, **extra, **self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FeatureUse:
        """From the hyperparameters' dict; ``input`` ``True`` means ``"add"``, ``False``
        ``None``."""
        d = dict(d or {})
        inp = d.pop("input", None)
        if isinstance(inp, bool):
            inp = "add" if inp else None
        if inp not in FEATURE_INPUTS:
            raise ConfigError(f"features.input: '{inp}' (choose null, add or concat)")
        weight = float(d.pop("weight", 0.0))
        whiten = float(d.pop("whiten", 0.0) or 0.0)
        if not whiten >= 0:
            raise ConfigError(f"features.whiten: {whiten}, must be >= 0 (0: off)")
        if whiten and not weight:
            raise ConfigError("features.whiten: weighs the head's error; set features.weight > 0")
        origin = float(d.pop("origin", 0.0) or 0.0)
        if not origin >= 0:
            raise ConfigError(f"features.origin: {origin}, must be >= 0 (0: off)")
        names = set(asdict(FeatureSpec()))
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"features: unknown option {', '.join(unknown)} (have input, weight, whiten, "
                f"origin, {', '.join(sorted(names))})"
            )
        return cls(FeatureSpec(**d), inp, weight, whiten, origin)


def part_kind(config: Mapping[str, Any]) -> str:
    """A part's label: its ``kind``, else its class name."""
    return str(config.get("kind") or str(config.get("_target_", "?")).rsplit(".", 1)[-1])


def part_factory(what: str, config: Mapping[str, Any]) -> functools.partial:
    """The partial ``config`` describes; ``what`` (``encoder`` / ``decoder``) names it in errors.

    The ``_target_`` must be an ``nn.Module`` class of weightspace: hyperparameters travel in
    checkpoints, and loading one must not import or call anything else.
    """
    opts = {k: v for k, v in config.items() if k != "kind"}
    target = opts.get("_target_")
    if not target:
        kind = config.get("kind")
        label = f"{what}.kind: '{kind}' is a label only; " if kind else f"{what}: "
        raise ConfigError(f"{label}give {what}._target_, the part's class (conf/{what}/*.yaml)")
    if not str(target).startswith("weightspace."):
        raise ConfigError(f"{what}._target_: '{target}' is not a class of weightspace")
    try:
        cls = get_class(str(target))
    except (HydraException, ImportError, ValueError) as e:
        msg = str(e).strip().splitlines()[0]
        raise ConfigError(f"{what}._target_: cannot import '{target}' ({msg})") from e
    if not issubclass(cls, nn.Module):
        raise ConfigError(f"{what}._target_: '{target}' is not an nn.Module")
    opts["_partial_"] = True  # the model adds the spec and the latent width
    return instantiate(opts, _convert_="all")
