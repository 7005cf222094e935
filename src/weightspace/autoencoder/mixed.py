"""One autoencoder over zoos of several architectures: a shared encoder, a head per architecture.

A zoo mixing widths and depths (several zoos of one task, served by
:class:`~weightspace.data.mixed.MixedDataModule` in batches of one architecture each) is read by
ONE encoder that takes any of them, :class:`~weightspace.autoencoder.graph.GraphEncoder` with
``readout="pooled"``: its message passing reads whatever shapes it gets and its readout has
one width for every depth, so all members land in one latent space. What cannot be shared
stays per architecture: the normalizer of the flat weights, the decoder (its output is one
architecture's weights), the probe inputs' buffers and the losses. Each architecture's head is
a whole :class:`~weightspace.autoencoder.module.WeightAutoencoder` whose ``encoder`` is the
shared one, so everything the single-architecture pipeline does with a model (its evaluation,
its latents, decoding) works per architecture on ``model.heads[k]``.

``train_autoencoder.py zoo='[a,b,c]' encoder=graph`` trains one (``train.py`` picks this
model when ``zoo`` lists several zoos of different architectures). Only the graph encoder
reads several architectures (the MLP and transformer encoders read one flat layout, the NFN's
layers one depth), and the latent is the encoder's own coordinates only: the concatenated
invariant features have a width per architecture (``features.input`` must be off).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn

from weightspace.autoencoder.graph import GraphEncoder, unit_symmetries
from weightspace.autoencoder.module import WeightAutoencoder
from weightspace.autoencoder.options import part_kind
from weightspace.autoencoder.reader import adamw_cosine
from weightspace.errors import ConfigError

__all__ = ["MixedAutoencoder"]

GRAPH = "weightspace.autoencoder.graph.GraphEncoder"


class MixedAutoencoder(pl.LightningModule):
    """A shared encoder and one :class:`WeightAutoencoder` head per architecture.

    Args:
        parts: each architecture's ``WeightAutoencoder`` keyword arguments (widths,
            activations, normalizer, encoder and decoder configs, loss weights...; the
            plain values :meth:`from_datamodule` collects). The encoder config and the
            optimizer's options (``lr``, ``weight_decay``, ``scheduler``, ``warmup_steps``) of
            the first part are everyone's.
        names: a label per architecture (logged as ``val/<name>/...``).

    A batch carries ``"arch"``: the index of its architecture's head.
    """

    def __init__(self, parts: Sequence[Mapping[str, Any]], names: Sequence[str]):
        super().__init__()
        parts = [dict(p) for p in parts]
        names = list(names)
        self.save_hyperparameters({"parts": parts, "names": names})
        if not parts or len(names) != len(parts):
            raise ConfigError(f"parts, names: one name per part, got {len(names)} for {len(parts)}")
        encoder = dict(parts[0].get("encoder") or {})
        if encoder.get("_target_") != GRAPH:
            raise ConfigError(
                f"encoder: {part_kind(encoder) if encoder else 'mlp'} reads one architecture; "
                f"zoos of several ({', '.join(names)}) need encoder=graph"
            )
        for p in parts:
            features = p.get("features") or {}
            if features.get("input") not in (None, False, "none"):
                raise ConfigError(
                    f"model.features.input: {features.get('input')}: the invariant features have "
                    f"a width per architecture ({', '.join(names)}); set it to false"
                )
        kinds = {unit_symmetries(a) for p in parts for a in p.get("activations", ["relu"])}
        if len(kinds) > 1 and encoder.get("symmetry", "auto") == "auto":
            raise ConfigError(
                "encoder.symmetry: auto cannot canonicalize zoos whose units have different "
                f"scale / sign symmetries ({', '.join(names)}); use encoder.symmetry=permutation"
            )
        encoder["readout"] = "pooled"
        heads = [WeightAutoencoder(**{**p, "encoder": encoder}) for p in parts]
        # The deepest head's encoder reads every shallower architecture: it is everyone's.
        deepest = max(range(len(heads)), key=lambda k: heads[k].spec.n_layers)
        shared = heads[deepest].encoder
        for head in heads:
            head.encoder = shared
        self.encoder: GraphEncoder = shared
        self.heads = nn.ModuleList(heads)
        self.names = names

    @classmethod
    def from_datamodule(
        cls, datamodule: Any, n_probe: int = 256, probe_seed: int = 0, **hparams: Any
    ) -> MixedAutoencoder:
        """A model for a :class:`~weightspace.data.mixed.MixedDataModule`: each head as
        :meth:`WeightAutoencoder.from_datamodule` builds it for its architecture's part
        (spec, normalizer, probe inputs), the encoder shared."""
        datamodule.setup()
        built = [
            WeightAutoencoder.from_datamodule(part, n_probe, probe_seed, **hparams)
            for part in datamodule.parts
        ]
        try:
            model = cls([dict(m.hparams) for m in built], datamodule.names)
        except ConfigError as e:  # name the zoos too
            zoos = ", ".join(Path(p).name for p in datamodule.zoo_paths)
            raise ConfigError(f"{e} (zoo: {zoos})") from e
        for head, m in zip(model.heads, built):  # the probe inputs (and labels) are buffers
            head.probe_inputs.copy_(m.probe_inputs)
            if hasattr(m, "probe_targets"):
                head.probe_targets.copy_(m.probe_targets)
        if hasattr(model.encoder, "probe_x"):  # the encoder's probe features: the task's inputs
            model.encoder.probe_x.copy_(built[0].encoder.probe_x)
        return model

    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            raise ConfigError(
                f"trainer: zoos of several architectures ({', '.join(self.names)}) train in one "
                "process (their loader does not shard batches across devices); use trainer=default"
            )

    @property
    def monitor(self) -> str:
        return self.heads[0].monitor  # the heads share their losses' settings

    @property
    def encoder_kind(self) -> str:
        return self.heads[0].encoder_kind

    def encode(self, batch: Mapping[str, Any]) -> Tensor:
        """Latents ``(B, latent)`` of a batch of one architecture (``batch["arch"]``)."""
        return self.heads[int(batch["arch"])].encode(batch)

    # ---- Lightning hooks: each batch to its architecture's head
    def _step(self, split: str, batch: Mapping[str, Any]) -> Tensor:
        k = int(batch["arch"])
        terms = self.heads[k].compute_losses(batch, functional=None if split == "train" else True)
        n = len(batch["member_id"])
        per_step = split == "train"
        for name, value in terms.items():
            for key in (f"{split}/{name}", f"{split}/{self.names[k]}/{name}"):
                self.log(
                    key,
                    value,
                    on_step=per_step,
                    on_epoch=not per_step,
                    prog_bar=key == f"{split}/loss",
                    batch_size=n,
                    sync_dist=not per_step,
                )
        return terms["loss"]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss = self._step("train", batch)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step("test", batch)

    def configure_optimizers(self) -> Any:
        hp = self.hparams.parts[0]
        scheduler = hp.get("scheduler", "cosine")
        total = math.inf if scheduler is None else self.trainer.estimated_stepping_batches
        return adamw_cosine(
            self,
            hp.get("lr", 1e-3),
            hp.get("weight_decay", 0.01),
            scheduler,
            hp.get("warmup_steps", 0),
            total,
        )

    def n_shared_parameters(self) -> tuple[int, int]:
        """(shared encoder, all) parameter counts, each tensor once."""
        shared = sum(p.numel() for p in self.encoder.parameters())
        return shared, sum(p.numel() for p in self.parameters())
