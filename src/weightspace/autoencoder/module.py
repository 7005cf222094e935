"""The weight autoencoder, a LightningModule: encoder -> latent -> decoder.

The module works on *normalized flat* weights ``(N, D)`` in ``state_dict`` order (per-tensor
standardization fitted on the training split,
:class:`~weightspace.data.normalizer.LayerNormalizer`); batches of neuron tokens are accepted
too and flattened first. Encoder and decoder are swappable parts built from ``_target_``
configs (:mod:`~weightspace.autoencoder.options`; the classes in
:mod:`~weightspace.autoencoder.encoders` and :mod:`~weightspace.autoencoder.decoders`):

- ``mlp``: fully connected layers on the flat vector (hidden sizes, activation, dropout,
  layer norm).
- ``transformer``: one token per neuron (its incoming weights and bias), a token embedding
  (a Linear per layer, or one shared Linear over padded tokens), layer and position
  embeddings, a transformer encoder and a pooled or compression-token latent. The decoder
  has one learned query per neuron that attends to memory tokens made from the latent, and a
  head per layer that writes each neuron's incoming weights and bias.
- ``probe``: an MLP on the network's outputs on the model's probe inputs.

Losses (:mod:`~weightspace.autoencoder.losses`), each weighted (0 switches it off):

- ``recon``: MSE on normalized weights, averaged over each ``state_dict`` tensor first, so
  a small bias vector counts as much as the large first-layer matrix.
- ``contrastive``: NT-Xent between the latents of two augmented views of each network
  (a datamodule with ``augment`` and ``views=2``), through a small projection head; or, with
  ``contrastive_positives=member``, supervised contrastive over the batch's members (every
  checkpoint of a member a positive; ``data.group_by_member``).
- ``functional``: the decoded network, denormalized and run with
  :func:`weightspace.nets.forward.forward` on fixed probe inputs from the zoo's task, must
  reproduce the original's outputs (MSE on outputs, or KL between softmaxes).
- ``stats``: a linear head on the latent predicts the hand-made invariant features
  (:class:`~weightspace.autoencoder.options.FeatureUse`, ``features.weight``).
- ``origin``: a second head predicts those of the member's first checkpoint in the batch
  (its init; ``features.origin``, with ``data.group_by_member``).
- ``field``: a conditional neural field on the latent and a probe input
  (:class:`~weightspace.autoencoder.decoders.FieldDecoder`, inr2vec's decoder) must give the
  original's output at that input (``functional_kind`` again): the latent has to carry what
  the network computes — an INR's image, a classifier's decisions — without the detour
  through one of the many weight vectors that compute it.

Every hyperparameter is a plain value (the normalizer and the feature use as dicts, the parts
as their configs), and the probe inputs are a buffer, so
``WeightAutoencoder.load_from_checkpoint(path)`` rebuilds the model alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.autoencoder.decoders import FieldDecoder
from weightspace.autoencoder.legacy import is_old_hparams, upgrade_hparams
from weightspace.autoencoder.losses import (
    check_loss_options,
    functional_loss,
    member_keys,
    nt_xent,
    origin_loss,
    reconstruction_loss,
    sup_con,
)
from weightspace.autoencoder.options import (
    DEFAULT_DECODER,
    DEFAULT_ENCODER,
    FeatureUse,
    part_factory,
)
from weightspace.autoencoder.reader import SCHEDULERS, WeightReader
from weightspace.data.datamodule import WeightDataModule
from weightspace.data.normalizer import LayerNormalizer
from weightspace.errors import ConfigError
from weightspace.features import FeatureSpec
from weightspace.features.pca import whitening
from weightspace.nets.layout import unflatten_params
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.inr import SignalTask, network_inputs

__all__ = ["WeightAutoencoder", "probe_inputs"]


def probe_inputs(x: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` rows of ``x`` drawn without replacement (all of them if there are fewer); the
    same ``seed`` draws the same rows of an equally long ``y`` (their labels)."""
    gen = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=gen)[:n]].clone()


class WeightAutoencoder(WeightReader, pl.LightningModule):
    """Autoencoder over flat, normalized MLP weights.

    Args:
        widths: the zoo's layer widths, input and output included.
        activations: activation names in the datamodule's category order: a batch's
            ``targets["activation"]`` codes index into it (zoos may mix activations).
        bias: whether the zoo's layers have biases.
        normalizer: :meth:`LayerNormalizer.to_dict` of the training split; ``None`` when the
            weights are not normalized.
        encoder, decoder: the parts' configs, ``{"_target_": class path, "kind": label,
            **options}`` (:mod:`~weightspace.autoencoder.options`); ``None``: the MLPs.
        latent_dim: size of the encoder's latent.
        recon_weight, contrastive_weight, functional_weight, field_weight: loss weights; 0
            turns a loss off.
        temperature: temperature of the contrastive loss.
        contrastive_positives: what the contrastive loss takes as positives: ``"views"``, two
            augmented views of one checkpoint (NT-Xent); ``"member"``, every checkpoint (and
            view) of one member in the batch (:func:`~weightspace.autoencoder.losses.sup_con`;
            with ``data.group_by_member`` a batch holds several checkpoints of each member):
            the latent is pulled to what a network keeps through training — its init,
            learning rate, weight decay — and pushed from other members.
        projection_dim: output size of the contrastive projection head.
        functional_kind: ``"mse"`` on outputs or ``"kl"`` between softmaxes (classification),
            for the functional and the field losses.
        field_hidden: hidden widths of the field decoder (with ``field_weight > 0``).
        detach_decoder: the weight decoder reads the latent without shaping it (its losses,
            ``recon`` and ``functional``, train the decoder only): the latent is what the
            other losses (``field``, ``contrastive``, ``stats``) make of it, and decoded
            networks are still there to evaluate and sample.
        features: how the model uses the network's hand-made invariant features (which ones,
            how the latent reads them, the weight of a head that predicts them), the plain dict
            of :class:`~weightspace.autoencoder.options.FeatureUse`; ``None``: not at all.
        stats_mean, stats_std: the features' training-split mean and std (plain lists;
            :meth:`from_datamodule` fills them when the features are used).
        n_probe: number of probe inputs (a buffer, filled from ``probe_inputs``).
        lr, weight_decay: AdamW; no decay on biases and norm gains.
        scheduler: ``None`` or ``"cosine"`` (per step, to 0 at the end of training).
        warmup_steps: linear warmup before the cosine decay.
        probe_inputs: ``(n_probe, widths[0])`` task inputs; not a hyperparameter (they travel in
            the state dict). Left out when loading a checkpoint.
        probe_targets: their labels (class indices ``(n_probe,)``, or regression targets
            ``(n_probe, out)``), needed with ``features.function`` only; like ``probe_inputs``.
        stats_whiten: with ``features.whiten``, the ``(S, S)`` map of the head's error into the
            features' scaled principal directions (:func:`~weightspace.features.pca.whitening`
            of the training split, filled by :meth:`from_datamodule`); a buffer, like
            ``probe_inputs``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        activations: Sequence[str] = ("relu",),
        bias: bool = True,
        normalizer: Mapping[str, Any] | None = None,
        encoder: Mapping[str, Any] | None = None,
        decoder: Mapping[str, Any] | None = None,
        latent_dim: int = 32,
        recon_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        functional_weight: float = 0.0,
        temperature: float = 0.1,
        contrastive_positives: str = "views",
        projection_dim: int = 32,
        functional_kind: str = "mse",
        field_weight: float = 0.0,
        field_hidden: Sequence[int] = (256, 256),
        detach_decoder: bool = False,
        features: Mapping[str, Any] | None = None,
        stats_mean: Sequence[float] | None = None,
        stats_std: Sequence[float] | None = None,
        n_probe: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        scheduler: str | None = "cosine",
        warmup_steps: int = 0,
        probe_inputs: Tensor | None = None,
        probe_targets: Tensor | None = None,
        stats_whiten: Any = None,
    ):
        super().__init__()
        use = FeatureUse.from_dict(features)
        features = use.to_dict()  # saved in this plain form ("add", not True)
        self.save_hyperparameters(ignore=["probe_inputs", "probe_targets", "stats_whiten"])
        check_loss_options(
            use,
            widths[-1],
            (recon_weight, contrastive_weight, functional_weight, field_weight),
            functional_kind=functional_kind,
            contrastive_positives=contrastive_positives,
            detach_decoder=detach_decoder,
            field_hidden=field_hidden,
        )
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: '{scheduler}' (choose null or cosine)")
        spec = MLPSpec(tuple(widths), activations[0], bias)
        n_stats = use.spec.width(spec)
        concat = use.input == "concat"
        #: how the model uses the invariant features (the ``features`` hyperparameter).
        self.features = use
        #: width of the latent: the encoder's, plus the features with features.input=concat.
        self.latent_width = latent_dim + (n_stats if concat else 0)
        self.spec = spec
        self.activations = list(activations)
        self.normalizer = None if normalizer is None else LayerNormalizer.from_dict(normalizer)
        # What the encoder reads (flat vectors, outputs, parameters): autoencoder.reader.
        self.encoder = self._build_encoder(
            encoder or DEFAULT_ENCODER, latent_dim, n_probe, probe_inputs
        )
        make_decoder = part_factory("decoder", decoder or DEFAULT_DECODER)
        try:
            self.decoder = make_decoder(self.spec, self.latent_width)
        except TypeError as e:
            raise ConfigError(f"decoder: {e}") from e
        if use.used and (stats_mean is None or stats_std is None):
            raise ConfigError("features.weight / features.input: need stats_mean and stats_std")
        if use.used and not (len(stats_mean) == len(stats_std) == n_stats):
            raise ConfigError(f"stats_mean, stats_std: need {n_stats} values each")
        self.stats_head = nn.Linear(latent_dim, n_stats) if use.weight > 0 else None
        self.origin_head = nn.Linear(latent_dim, n_stats) if use.origin > 0 else None
        if use.whiten:  # (a buffer only then: earlier checkpoints reload strictly)
            if stats_whiten is not None and tuple(np.shape(stats_whiten)) != (n_stats, n_stats):
                raise ConfigError(f"stats_whiten: needs shape ({n_stats}, {n_stats})")
            eye = torch.eye(n_stats)
            w = eye if stats_whiten is None else torch.as_tensor(stats_whiten).float()
            self.register_buffer("stats_whiten", w)
        self.field = (
            FieldDecoder(self.latent_width, spec.widths[0], spec.widths[-1], field_hidden)
            if field_weight > 0
            else None
        )
        self.stats_in = nn.Linear(n_stats, latent_dim) if use.input == "add" else None
        self.stats_concat = concat
        self.register_buffer(
            "stats_mean", torch.tensor(stats_mean or [0.0] * n_stats), persistent=False
        )
        self.register_buffer(
            "stats_std", torch.tensor(stats_std or [1.0] * n_stats), persistent=False
        )
        self.projection = (
            nn.Sequential(
                nn.Linear(self.latent_width, latent_dim),
                nn.ReLU(),
                nn.Linear(latent_dim, projection_dim),
            )
            if contrastive_weight > 0
            else None
        )

        # Per-entry normalizer statistics (derived, not saved) and the probe inputs (saved).
        self._register_weight_buffers(n_probe, probe_inputs)
        self.tensor_sizes = [math.prod(s) for s in self.spec.param_shapes().values()]
        if use.spec.function and len(self.activations) > 1:
            raise ConfigError(
                f"features.function: needs a zoo of one activation, this one mixes "
                f"{', '.join(self.activations)}"
            )
        if use.spec.function:  # (a buffer only then: earlier checkpoints reload strictly)
            classes = self.spec.widths[-1] > 1
            tshape = (n_probe,) if classes else (n_probe, self.spec.widths[-1])
            if probe_targets is not None and tuple(probe_targets.shape) != tshape:
                raise ConfigError(
                    f"probe_targets: shape {tuple(probe_targets.shape)}, expected {tshape}"
                )
            if probe_targets is None:
                probe_targets = torch.zeros(tshape, dtype=torch.long if classes else None)
            self.register_buffer(
                "probe_targets", probe_targets.long() if classes else probe_targets.float()
            )

    @classmethod
    def from_datamodule(
        cls, datamodule: WeightDataModule, n_probe: int = 256, probe_seed: int = 0, **hparams: Any
    ) -> WeightAutoencoder:
        """A model for the datamodule's zoo: spec, normalizer, and ``n_probe`` training inputs
        of its task (drawn with ``probe_seed``) as probe inputs; when the invariant features
        are used (``features.input`` or ``features.weight``), their mean and std over (up to
        4,096 checkpoints of) the training split."""
        datamodule.setup()
        spec = datamodule.spec
        task = datamodule.task  # zoos of one datamodule share widths
        use = FeatureUse.from_dict(hparams.get("features"))
        probe = probe_inputs(network_inputs(task), n_probe, probe_seed)  # INRs: coordinates
        if isinstance(task, SignalTask):
            if use.spec.function:
                raise ConfigError(
                    f"features.function: reads a loss on shared labels, but every member of "
                    f"the INR zoo ({task.name}) fits its own signal; set it to false"
                )
            labels = None
        else:
            labels = probe_inputs(task.y_train, n_probe, probe_seed)
        if use.used:
            train = datamodule.dataset("train")
            gen = torch.Generator().manual_seed(probe_seed)
            idx = torch.randperm(len(train), generator=gen)[:4096].sort().values
            stats = use.spec.compute_torch(
                {k: v.double() for k, v in train.params(idx.numpy()).items()},
                spec,
                (probe.double(), labels),
            )
            hparams.setdefault("stats_mean", stats.mean(0).tolist())
            hparams.setdefault("stats_std", stats.std(0).clamp_min(1e-8).tolist())
            if use.whiten:
                mean, std = torch.tensor(hparams["stats_mean"]), torch.tensor(hparams["stats_std"])
                hparams["stats_whiten"] = whitening((stats.float() - mean) / std, use.whiten)
        return cls(
            widths=list(spec.widths),
            activations=datamodule.categories.get("activation", [spec.activation]),
            bias=spec.bias,
            normalizer=None if datamodule.normalizer is None else datamodule.normalizer.to_dict(),
            n_probe=len(probe),
            probe_inputs=probe,
            probe_targets=labels if use.spec.function else None,
            **hparams,
        )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path | Any,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> WeightAutoencoder:
        """Lightning's ``load_from_checkpoint``; a checkpoint written before the restructure
        (parts named by ``kind``, five ``stats_*`` options) gets today's hyperparameters
        first (:func:`~weightspace.autoencoder.legacy.upgrade_hparams`)."""
        if isinstance(checkpoint_path, str | Path):
            saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
            hparams = saved.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}
            if is_old_hparams(hparams):
                kwargs = {**upgrade_hparams(hparams), **kwargs}
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, **kwargs
        )

    @property
    def monitor(self) -> str:
        """What the best checkpoint minimizes: the weights' reconstruction (``val/recon``),
        unless the field alone shapes the latent (``field_weight > 0`` with a detached decoder
        or no reconstruction loss): then ``val/field``, since the reconstruction of a decoder
        that follows the latent says nothing about the latent."""
        hp = self.hparams
        if hp.field_weight > 0 and (hp.detach_decoder or hp.recon_weight == 0):
            return "val/field"
        return "val/recon"

    # ---- the public API (encoder_kind, flat_weights, denormalize, network_outputs: reader)
    def encode(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Latents ``(..., latent)`` of a batch, or of normalized flat weights ``(..., D)``."""
        x = batch_or_weights
        if isinstance(x, Mapping):
            x = self.flat_weights(x)
        return self._encode_flat(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    def _probe(self) -> tuple[Tensor, Tensor] | None:
        """(inputs, labels) of the function features, when the model reads them."""
        return (self.probe_inputs, self.probe_targets) if self.features.spec.function else None

    def weight_statistics(self, flat: Tensor) -> Tensor:
        """Standardized invariant features ``(N, S)`` of networks given as normalized flat
        weights ``(N, D)``: per-layer statistics, then the spectra, product spectra and
        function features ``features`` asks for."""
        # In float64: a bias's mean is a small difference of large sums, and standardizing
        # by a small spread across the zoo would magnify float32 rounding.
        params = unflatten_params(self.denormalize(flat).double(), self.spec)
        probe = self._probe()
        if probe is not None:
            probe = (probe[0].double(), probe[1])
        stats = self.features.spec.compute_torch(params, self.spec, probe)
        return ((stats - self.stats_mean.double()) / self.stats_std.double()).to(flat.dtype)

    def invariant_features(self, params: Params) -> np.ndarray:
        """The hand-made reference for this model's latent: the invariant features of ``N``
        stacked networks (their own, denormalized weights) as ``(N, F)`` float64 — the
        per-layer statistics and every weight matrix's log singular values, with the layer
        products' and the function features (on the model's probe inputs) when the model
        reads those. Unstandardized."""
        spec = self.features.spec
        fs = FeatureSpec(
            spectrum=True, products=spec.products, function=spec.function, shape=spec.shape
        )
        probe = self._probe()
        if probe is not None:
            probe = (probe[0].detach().cpu(), probe[1].detach().cpu())
        return fs.compute(params, self.spec, probe)

    def encode_learned(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """The encoder's own coordinates ``(..., latent_dim)``: the latent without the
        invariant features it carries (concatenated, or added through ``stats_in``)."""
        x = batch_or_weights
        if isinstance(x, Mapping):
            x = self.flat_weights(x)
        flat = x.reshape(-1, x.shape[-1])
        return self.encoder(self._encoder_input(flat)).reshape(*x.shape[:-1], -1)

    def _encode_flat(self, flat: Tensor, stats: Tensor | None = None) -> Tensor:
        z = self.encoder(self._encoder_input(flat))
        if self.stats_in is None and not self.stats_concat:
            return z
        stats = self.weight_statistics(flat) if stats is None else stats
        if self.stats_concat:
            return torch.cat([z, stats], -1)
        return z + self.stats_in(stats)

    def decode(self, latent: Tensor) -> Tensor:
        """Normalized flat weights ``(..., D)`` from latents ``(..., latent)``."""
        return self.decoder(latent.reshape(-1, latent.shape[-1])).reshape(*latent.shape[:-1], -1)

    def decode_params(self, latent: Tensor) -> Params:
        """Denormalized parameters ``{name: (..., *shape)}`` ready for ``mlp.forward``."""
        return unflatten_params(self.denormalize(self.decode(latent)), self.spec)

    def forward(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Reconstruction: normalized flat weights, same leading shape as the input."""
        return self.decode(self.encode(batch_or_weights))

    # ---- losses
    def recon_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """MSE per ``state_dict`` tensor, then the mean over tensors."""
        return reconstruction_loss(pred, target, self.tensor_sizes)

    def functional_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Decoded outputs ``pred`` vs the original's ``target``, both ``(N, n_probe, out)``."""
        return functional_loss(pred, target, self.hparams.functional_kind)

    def compute_losses(
        self, batch: Mapping[str, Any], functional: bool | None = None
    ) -> dict[str, Tensor]:
        """Every loss term that applies to ``batch`` and the weighted total ``"loss"``.

        ``functional`` forces the functional term (and, for classifiers, ``agreement``: the
        fraction of probe inputs on which the decoded network predicts the original's class)
        on or off; by default it is computed when its weight is > 0. The field term is
        computed whenever the model has a field decoder.
        """
        hp = self.hparams
        x = self.flat_weights(batch)
        x = x if x.dim() == 3 else x.unsqueeze(1)  # (B, V, D)
        b, v, d = x.shape
        flat = x.reshape(b * v, d)
        stats = None
        heads = (self.stats_in, self.stats_head, self.origin_head)
        if any(h is not None for h in heads) or self.stats_concat:
            with torch.no_grad():
                stats = self.weight_statistics(flat)  # (B*V, S), an input and a target
        z = self._encode_flat(flat, stats)  # (B*V, latent)
        recon = self.decoder(z.detach() if hp.detach_decoder else z)  # (B*V, D)

        terms = {"recon": self.recon_loss(recon, flat)}
        if self.stats_head is not None:
            pred = self.stats_head(z)
            if self.features.whiten:  # in the features' principal directions, over their spread
                terms["stats"] = ((pred - stats) @ self.stats_whiten).square().mean()
            else:
                terms["stats"] = F.mse_loss(pred, stats)
        if self.origin_head is not None:  # every checkpoint predicts its member's first one
            keys, epochs = (
                member_keys(batch).repeat_interleave(v),
                batch["epoch"].repeat_interleave(v),
            )
            terms["origin"] = origin_loss(self.origin_head, z, stats, keys, epochs)
        if self.projection is not None and hp.contrastive_positives == "member":
            labels = member_keys(batch).to(z.device).repeat_interleave(v)  # views: one member
            terms["contrastive"] = sup_con(self.projection(z), labels, hp.temperature)
        elif v >= 2 and self.projection is not None:
            p = self.projection(z).view(b, v, -1)
            terms["contrastive"] = nt_xent(p[:, 0], p[:, 1], hp.temperature)
        elif hp.contrastive_weight > 0:
            raise ConfigError(
                "contrastive_weight > 0 needs two augmented views per network "
                "(canon=augment, or data.augment=weightspace.symmetry.augment data.views=2) "
                "or contrastive_positives=member (with data.group_by_member=true)"
            )
        if functional is None:
            functional = hp.functional_weight > 0
        target = None
        if functional or self.field is not None:
            act = batch.get("targets", {}).get("activation")
            act = None if act is None else act.repeat_interleave(v)
            with torch.no_grad():
                target = self.network_outputs(flat, act)  # (B*V, n_probe, out)
        if self.field is not None:
            terms["field"] = self.functional_loss(self.field(z, self.probe_inputs), target)
        if functional:
            pred = self.network_outputs(recon, act)
            terms["functional"] = self.functional_loss(pred, target)
            if self.spec.widths[-1] > 1:
                terms["agreement"] = (pred.argmax(-1) == target.argmax(-1)).float().mean()

        weights = {
            "recon": hp.recon_weight,
            "contrastive": hp.contrastive_weight,
            "functional": hp.functional_weight,
            "stats": self.features.weight,
            "origin": self.features.origin,
            "field": hp.field_weight,
        }
        terms["loss"] = sum(weights[k] * terms[k] for k in weights if k in terms and weights[k] > 0)
        return terms

    # ---- Lightning hooks
    def _log_terms(self, split: str, terms: Mapping[str, Tensor], batch_size: int) -> None:
        # Training terms per step; held-out ones averaged over the epoch (and over devices).
        per_step = split == "train"
        for name, value in terms.items():
            self.log(
                f"{split}/{name}",
                value,
                on_step=per_step,
                on_epoch=not per_step,
                prog_bar=name == "loss",
                batch_size=batch_size,
                sync_dist=not per_step,
            )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        terms = self.compute_losses(batch)
        self._log_terms("train", terms, len(batch["member_id"]))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return terms["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # The functional term is always measured on held-out networks, weighted or not.
        self._log_terms("val", self.compute_losses(batch, functional=True), len(batch["member_id"]))

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._log_terms(
            "test", self.compute_losses(batch, functional=True), len(batch["member_id"])
        )
