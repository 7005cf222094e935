"""Runs written before the package's restructure, read as today's.

- Their ``config.yaml`` names the old module paths as ``_target_``
  (``weightspace.dataset.WeightDataModule``, ``weightspace.autoencoder.WeightAutoencoder``):
  :func:`upgrade_config` renames them, before :func:`weightspace.autoencoder.run.load_run`
  checks the config against its allow-list (an old path is only ever renamed to today's
  path of the same class, never imported).
- Their checkpoints' hyperparameters name the encoder and decoder by ``kind`` only and carry
  five ``stats_*`` options: :func:`upgrade_hparams` gives the parts their ``_target_`` and
  folds the options into ``features``
  (:class:`~weightspace.autoencoder.options.FeatureUse`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["OLD_TARGETS", "is_old_hparams", "upgrade_config", "upgrade_hparams"]

OLD_TARGETS = {
    "weightspace.dataset.WeightDataModule": "weightspace.data.datamodule.WeightDataModule",
    "weightspace.autoencoder.WeightAutoencoder.from_datamodule": (
        "weightspace.autoencoder.module.WeightAutoencoder.from_datamodule"
    ),
    "weightspace.autoencoder.WeightAutoencoder": "weightspace.autoencoder.module.WeightAutoencoder",
}
# The classes the old ``kind`` names meant (old checkpoints only: configs name a _target_).
_OLD_PARTS = {
    "encoder": {
        "mlp": "weightspace.autoencoder.encoders.MLPEncoder",
        "transformer": "weightspace.autoencoder.encoders.TransformerEncoder",
        "probe": "weightspace.autoencoder.encoders.ProbeEncoder",
    },
    "decoder": {
        "mlp": "weightspace.autoencoder.decoders.MLPDecoder",
        "transformer": "weightspace.autoencoder.decoders.TransformerDecoder",
    },
}
# old hyperparameter -> key of the ``features`` dict
_OLD_FEATURES = {
    "stats_input": "input",
    "stats_weight": "weight",
    "stats_spectrum": "spectrum",
    "stats_products": "products",
    "stats_function": "function",
}


def upgrade_config(node: Any) -> Any:
    """Rename old ``_target_`` paths in a run's config, in place; returns ``node``."""
    if isinstance(node, DictConfig | dict):
        for key in list(node.keys()):
            if isinstance(node, DictConfig) and OmegaConf.is_missing(node, key):
                continue  # ??? : nothing to rename, and reading it would raise
            value = node[key]
            if key == "_target_" and isinstance(value, str) and value in OLD_TARGETS:
                node[key] = OLD_TARGETS[value]
            else:
                upgrade_config(value)
    elif isinstance(node, ListConfig | list):
        for item in node:
            upgrade_config(item)
    return node


def is_old_hparams(hparams: Mapping[str, Any]) -> bool:
    parts = [hparams.get(p) for p in _OLD_PARTS]
    return any(k in hparams for k in _OLD_FEATURES) or any(
        isinstance(p, Mapping) and "_target_" not in p for p in parts
    )


def upgrade_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The ``encoder``, ``decoder`` and ``features`` arguments old ``hparams`` mean today."""
    out: dict[str, Any] = {}
    for what, kinds in _OLD_PARTS.items():
        part = hparams.get(what)
        if isinstance(part, Mapping) and "_target_" not in part:
            kind = part.get("kind", "mlp")
            target = {"_target_": kinds[kind], "_partial_": True} if kind in kinds else {}
            out[what] = {**target, **part}
    features = {new: hparams[old] for old, new in _OLD_FEATURES.items() if old in hparams}
    if features:
        out["features"] = features
    return out
