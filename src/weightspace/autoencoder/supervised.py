"""The supervised ceiling: an encoder trained to predict one property of a network directly.

The field's weight-space papers (Unterthiner et al. 2020; NFN, DWSNets, Neural Graphs, ScaleGMN)
report encoders trained end to end on a target — a network's test accuracy, its generalization
gap, an INR's class. :class:`WeightPredictor` is that model for weightspace: the *same* encoder
as the autoencoder's (``conf/encoder/<kind>.yaml``, built and fed by
:class:`~weightspace.autoencoder.reader.WeightReader`, so ``reads_params`` / ``reads_outputs`` /
``reads_activations`` mean the same), then an MLP head::

    normalized flat weights (N, D) -> encoder -> (N, latent_dim) -> head -> (N, 1) or (N, C)

- ``target``: any target a datamodule batch carries in ``batch["targets"]``
  (:attr:`WeightDataModule.target_names`: ``test_acc``, ``generalization_gap``, ``lr``,
  ``epoch``, ...), or ``log_<name>`` for the base-10 log of a positive one (``log_lr``).
  Float targets are regressed with MSE on values standardized by the training split's mean
  and std (items without a finite value, e.g. ``init_value`` of a random init, are left out
  of the loss and the metrics); categorical ones (``init``, ``optimizer``, ``activation``,
  names in :attr:`WeightDataModule.categories`) are classified with cross-entropy.
- Metrics per split: ``loss``, and ``r2`` (over the whole epoch, affine-invariant, so the same
  on the standardized scale) and ``mae`` (in the target's units) for regression, ``accuracy``
  for classification. Checkpoints are selected on ``val/loss`` (lowest), or with
  ``select=score`` on the held-out score (highest ``val/accuracy`` for classification, ``val/r2``
  for regression: what the field's papers report; a classifier's validation loss can rise
  while its accuracy still climbs) — :attr:`WeightPredictor.monitor` / ``monitor_mode``, read
  by :func:`weightspace.autoencoder.train.train`.

Every hyperparameter is a plain value (the target's statistics and class names included), so
``WeightPredictor.load_from_checkpoint(path)`` rebuilds the model alone. Train it with
``scripts/train_autoencoder.py experiment=autoencoder/supervised zoo=PATH encoder=KIND``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, R2Score
from torchmetrics.classification import MulticlassAccuracy

from weightspace.autoencoder.blocks import mlp_layers
from weightspace.autoencoder.module import probe_inputs
from weightspace.autoencoder.options import DEFAULT_ENCODER, FeatureUse
from weightspace.autoencoder.reader import SCHEDULERS, WeightReader
from weightspace.data.datamodule import WeightDataModule
from weightspace.data.normalizer import LayerNormalizer
from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.inr import network_inputs

__all__ = ["WeightPredictor"]

LOG_PREFIX = "log_"
# Options of conf/train_autoencoder.yaml's ``model`` that belong to the autoencoder. One config
# serves both models, so the predictor takes them; it refuses a loss it does not have and
# ignores the rest (the decoder and the losses' own settings).
AUTOENCODER_LOSSES = ("recon_weight", "contrastive_weight", "functional_weight", "field_weight")
AUTOENCODER_OPTIONS = (
    "decoder",
    "temperature",
    "contrastive_positives",
    "projection_dim",
    "functional_kind",
    "field_hidden",
    "detach_decoder",
)
SELECT = ("loss", "score")


def target_values(targets: Mapping[str, Tensor], target: str) -> Tensor:
    """The values ``(N,)`` of ``target`` in a batch's targets: the named one, or the base-10
    log of ``<name>`` for ``log_<name>`` (non-positive values become -inf or nan)."""
    if target in targets or not target.startswith(LOG_PREFIX):
        return targets[target]
    return torch.log10(targets[target[len(LOG_PREFIX) :]].double()).float()


class WeightPredictor(WeightReader, pl.LightningModule):
    """An encoder and an MLP head, trained on one target of the networks (module docstring).

    Args:
        widths, activations, bias, normalizer, encoder, latent_dim, n_probe, lr,
            weight_decay, scheduler, warmup_steps, probe_inputs: as for
            :class:`~weightspace.autoencoder.module.WeightAutoencoder`.
        target: the target's name (a key of ``batch["targets"]``, or ``log_<name>``).
        classes: the class names of a categorical target (its codes index into them);
            ``None``: a float target, regressed.
        target_mean, target_std: the float target's training-split mean and std.
        head: hidden sizes of the head (``[]``: one linear layer).
        head_activation, dropout: the head's activation and dropout (layer norm between).
        select: which checkpoint is best: ``loss`` (lowest ``val/loss``) or ``score``
            (highest ``val/accuracy``, or ``val/r2`` for a float target).
    """

    def __init__(
        self,
        widths: Sequence[int],
        activations: Sequence[str] = ("relu",),
        bias: bool = True,
        normalizer: Mapping[str, Any] | None = None,
        encoder: Mapping[str, Any] | None = None,
        latent_dim: int = 32,
        target: str = "test_acc",
        classes: Sequence[str] | None = None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        head: Sequence[int] = (64,),
        head_activation: str = "gelu",
        dropout: float = 0.0,
        n_probe: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        scheduler: str | None = "cosine",
        warmup_steps: int = 0,
        probe_inputs: Tensor | None = None,
        select: str = "loss",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["probe_inputs"])
        if select not in SELECT:
            raise ConfigError(f"model.select: '{select}' (choose {' or '.join(SELECT)})")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: '{scheduler}' (choose null or cosine)")
        if classes is not None and len(classes) < 2:
            raise ConfigError(f"target: '{target}' needs two classes or more, has {list(classes)}")
        if not (math.isfinite(target_std) and target_std > 0):
            raise ConfigError(f"target_std: {target_std}, must be > 0")
        self.spec = MLPSpec(tuple(widths), activations[0], bias)
        self.activations = list(activations)
        self.normalizer = None if normalizer is None else LayerNormalizer.from_dict(normalizer)
        self.encoder = self._build_encoder(
            encoder or DEFAULT_ENCODER, latent_dim, n_probe, probe_inputs
        )
        self.classify = classes is not None
        out = len(classes) if classes is not None else 1
        self.head = mlp_layers([latent_dim, *head, out], head_activation, dropout, True)
        self._register_weight_buffers(n_probe, probe_inputs)
        # Epoch-level metrics of the held-out splits (no state in the checkpoint).
        if self.classify:
            self.metrics = nn.ModuleDict(
                {s: MulticlassAccuracy(out, average="micro") for s in ("val", "test")}
            )
        else:
            self.metrics = nn.ModuleDict({s: R2Score() for s in ("val", "test")})
            self.mae = nn.ModuleDict({s: MeanAbsoluteError() for s in ("val", "test")})

    @classmethod
    def from_datamodule(
        cls,
        datamodule: WeightDataModule,
        target: str = "test_acc",
        n_probe: int = 256,
        probe_seed: int = 0,
        **hparams: Any,
    ) -> WeightPredictor:
        """A model for the datamodule's zoo and ``target`` (checked against the targets its
        batches carry; a float target's mean and std from the training split). Takes the
        autoencoder's options of the shared config too: its loss weights must be 0, its
        decoder and loss settings are ignored; the invariant features must be off."""
        for name in AUTOENCODER_LOSSES:
            if hparams.pop(name, 0):
                raise ConfigError(
                    f"model.{name}: must be 0, the supervised model has no decoder and one loss "
                    "(experiment=autoencoder/supervised sets 0)"
                )
        for name in AUTOENCODER_OPTIONS:
            hparams.pop(name, None)
        if FeatureUse.from_dict(hparams.pop("features", None)).used:
            raise ConfigError("model.features: the supervised model reads no invariant features")
        datamodule.setup()
        spec = datamodule.spec
        names = datamodule.target_names
        cats = datamodule.categories
        log = target not in names and target.startswith(LOG_PREFIX)
        base = target[len(LOG_PREFIX) :] if log else target
        if base not in names or (log and base in cats):
            raise ConfigError(
                f"target: '{target}' is not a target of this zoo (choose from "
                f"{', '.join(names)}; log_<name> for the log10 of a positive float one)"
            )
        if base in cats:
            hparams["classes"] = list(cats[base])
        else:
            values = datamodule.dataset("train").items[base].to_numpy(np.float64)
            if log:
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.log10(values)
            values = values[np.isfinite(values)]
            if len(values) < 2:
                raise ConfigError(f"target: '{target}' has < 2 finite values in the training split")
            hparams["target_mean"] = float(values.mean())
            hparams["target_std"] = float(max(values.std(), 1e-8))
        probe = probe_inputs(network_inputs(datamodule.task), n_probe, probe_seed)
        return cls(
            widths=list(spec.widths),
            activations=datamodule.categories.get("activation", [spec.activation]),
            bias=spec.bias,
            normalizer=None if datamodule.normalizer is None else datamodule.normalizer.to_dict(),
            target=target,
            n_probe=len(probe),
            probe_inputs=probe,
            **hparams,
        )

    @property
    def monitor(self) -> str:
        """The metric checkpoints are selected on (``select``; read by ``train(cfg)``)."""
        if self.hparams.get("select", "loss") == "loss":
            return "val/loss"
        return "val/accuracy" if self.classify else "val/r2"

    @property
    def monitor_mode(self) -> str:
        """``min`` for the loss, ``max`` for a score."""
        return "min" if self.monitor == "val/loss" else "max"

    # ---- the public API
    def encode(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """The encoder's latents ``(..., latent_dim)`` of a batch or of normalized flat
        weights ``(..., D)``."""
        x = batch_or_weights
        if isinstance(x, Mapping):
            x = self.flat_weights(x)
        flat = x.reshape(-1, x.shape[-1])
        return self.encoder(self._encoder_input(flat)).reshape(*x.shape[:-1], -1)

    def forward(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """The head's output: the standardized target ``(...,)``, or class logits
        ``(..., C)``."""
        out = self.head(self.encode(batch_or_weights))
        return out if self.classify else out.squeeze(-1)

    def predict(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Predictions in the target's units ``(...,)`` (for ``log_<name>``: its log10), or
        class codes (indices into ``hparams.classes``)."""
        out = self(batch_or_weights)
        if self.classify:
            return out.argmax(-1)
        return out * self.hparams.target_std + self.hparams.target_mean

    # ---- the loss
    def _step(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, kept outputs, kept targets): the target's values for every network of the
        batch (each view of it), those without a value left out."""
        x = self.flat_weights(batch)
        v = x.shape[1] if x.dim() == 3 else 1  # augmented views: each one a sample
        out = self(x.reshape(-1, x.shape[-1]))  # (B*V,) or (B*V, C)
        y = target_values(batch["targets"], self.hparams.target).repeat_interleave(v)
        if self.classify:
            keep = y >= 0  # code -1: a member without this hyperparameter
            out, y = out[keep], y[keep].long()
            loss = F.cross_entropy(out, y) if len(y) else out.sum() * 0.0
        else:
            y = (y.float() - self.hparams.target_mean) / self.hparams.target_std
            keep = torch.isfinite(y)
            out, y = out[keep], y[keep]
            loss = F.mse_loss(out, y) if len(y) else out.sum() * 0.0
        return loss, out.detach(), y

    # ---- Lightning hooks
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=len(batch["index"]))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def _held_out(self, split: str, batch: Mapping[str, Any]) -> None:
        loss, out, y = self._step(batch)
        kw = {"on_step": False, "on_epoch": True, "batch_size": max(1, len(y))}
        self.log(f"{split}/loss", loss, prog_bar=True, sync_dist=True, **kw)
        if not len(y):
            return
        metric = self.metrics[split]
        if self.classify:
            metric.update(out, y)
            self.log(f"{split}/accuracy", metric, **kw)
            return
        metric.update(out, y)
        self.log(f"{split}/r2", metric, **kw)
        std = self.hparams.target_std
        self.mae[split].update(out * std, y * std)  # a shift changes no absolute error
        self.log(f"{split}/mae", self.mae[split], **kw)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._held_out("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._held_out("test", batch)
