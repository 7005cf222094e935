"""What every model over a zoo's networks shares: an encoder built from its config, what that
encoder reads of a batch, and the optimizer.

:class:`WeightReader` is a mixin of the LightningModules that encode networks —
:class:`~weightspace.autoencoder.module.WeightAutoencoder` (encoder -> latent -> decoder) and
:class:`~weightspace.autoencoder.supervised.WeightPredictor` (encoder -> head -> a target) — so
both build the same encoder from the same ``conf/encoder/<kind>.yaml`` and feed it the same
input. Batches hold *normalized flat* weights ``(N, D)`` (or neuron tokens, flattened first);
an encoder class says what it reads instead by class attributes:

- ``reads_outputs``: the network's outputs on the model's probe inputs ``(N, n_probe, out)``
  (the partial also gets ``n_probe``);
- ``reads_params``: the network's own, denormalized parameters ``{name: (N, *shape)}`` —
  what symmetry-aware encoders need to see rescalings and sign flips as the symmetries they
  are;
- ``reads_activations``: the zoo's activations (the partial gets ``activations``; a zoo may mix
  them). An encoder reading outputs, or parameters without this, needs a zoo of one
  activation.
- ``reads_probe_inputs``: the partial also gets the model's probe inputs ``probe_inputs``
  (``None`` when a checkpoint is loading: they come back with the state dict).

The host class sets ``spec``, ``activations`` and ``normalizer`` and saves the hyperparameters
``encoder``, ``lr``, ``weight_decay``, ``scheduler`` and ``warmup_steps`` before calling
:meth:`WeightReader._build_encoder` and :meth:`WeightReader._register_weight_buffers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from weightspace.autoencoder.options import DEFAULT_ENCODER, part_factory, part_kind
from weightspace.data.normalizer import LayerNormalizer
from weightspace.errors import ConfigError
from weightspace.nets.forward import forward, forward_groups
from weightspace.nets.layout import flatten_params, tokens_to_params, unflatten_params
from weightspace.nets.spec import MLPSpec, Params

__all__ = ["SCHEDULERS", "WeightReader", "adamw_cosine"]

SCHEDULERS = (None, "cosine")


class WeightReader:
    """Mixin (before ``pl.LightningModule`` in the bases): the encoder and its input."""

    spec: MLPSpec
    activations: list[str]
    normalizer: LayerNormalizer | None
    hparams: Any

    def _build_encoder(
        self,
        config: Mapping[str, Any],
        latent_dim: int,
        n_probe: int,
        probe_inputs: Tensor | None = None,
    ):
        """The encoder ``config`` describes, ``(spec, latent_dim[, n_probe][, activations]
        [, probe_inputs])``; sets :attr:`reads_outputs` and :attr:`reads_params`."""
        make_encoder = part_factory("encoder", config)
        self.reads_outputs = getattr(make_encoder.func, "reads_outputs", False)
        self.reads_params = getattr(make_encoder.func, "reads_params", False)
        extra = {}
        reads_activations = getattr(make_encoder.func, "reads_activations", False)
        # Outputs on probe inputs, or parameters canonicalized for the spec's one activation:
        # a zoo mixing activations is read wrongly unless the encoder is told each member's.
        one_activation = self.reads_outputs or (self.reads_params and not reads_activations)
        if one_activation and len(self.activations) > 1:
            raise ConfigError(
                f"encoder.kind: {part_kind(config)} needs a zoo of one activation, this one "
                f"mixes {', '.join(self.activations)}"
            )
        if self.reads_outputs:
            extra["n_probe"] = n_probe
        if reads_activations:  # the zoo's, maybe mixed
            extra["activations"] = tuple(self.activations)
        if getattr(make_encoder.func, "reads_probe_inputs", False):
            extra["probe_inputs"] = probe_inputs
        try:
            return make_encoder(self.spec, latent_dim, **extra)
        except TypeError as e:  # an option the part does not take
            raise ConfigError(f"encoder: {e}") from e

    def _register_weight_buffers(self, n_probe: int, probe_inputs: Tensor | None) -> None:
        """The normalizer's per-entry mean and std (derived, not saved) and the probe inputs
        (saved: they travel in the state dict)."""
        assert isinstance(self, nn.Module)
        d = self.spec.n_params()
        zeros, ones = torch.zeros(d), torch.ones(d)
        mean = zeros if self.normalizer is None else self.normalizer.denormalize_flat(zeros)
        std = ones if self.normalizer is None else self.normalizer.denormalize_flat(ones) - mean
        self.register_buffer("weight_mean", mean, persistent=False)  # (D,)
        self.register_buffer("weight_std", std, persistent=False)  # (D,)
        shape = (n_probe, self.spec.widths[0])
        if probe_inputs is not None and tuple(probe_inputs.shape) != shape:
            raise ConfigError(f"probe_inputs: shape {tuple(probe_inputs.shape)}, expected {shape}")
        self.register_buffer(
            "probe_inputs", torch.zeros(shape) if probe_inputs is None else probe_inputs.float()
        )

    @property
    def encoder_kind(self) -> str:
        """The encoder's label (``kind`` in its config, else its class name)."""
        return part_kind(self.hparams.get("encoder") or DEFAULT_ENCODER)

    def flat_weights(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Normalized flat weights ``(B, [V,] D)`` of a datamodule batch (flat or tokens)."""
        if "weights" in batch:
            return batch["weights"]
        return flatten_params(tokens_to_params(batch["tokens"], self.spec), self.spec)

    def denormalize(self, flat: Tensor) -> Tensor:
        """Normalized flat weights -> weights as the zoo stores them, same shape."""
        return flat * self.weight_std + self.weight_mean

    def network_outputs(self, flat: Tensor, activation: Tensor | None = None) -> Tensor:
        """Outputs ``(N, n_probe, out)`` on the probe inputs of networks given as normalized
        flat weights ``(N, D)``; ``activation``: ``(N,)`` codes into :attr:`activations`."""
        params = unflatten_params(self.denormalize(flat), self.spec)
        if activation is None or len(self.activations) == 1:
            return forward(params, self.probe_inputs, self.spec)
        specs = [replace(self.spec, activation=self.activations[c]) for c in activation.tolist()]
        out = flat.new_empty(len(flat), len(self.probe_inputs), self.spec.widths[-1])
        for idx, y in forward_groups(params, self.probe_inputs, specs):
            out[idx] = y
        return out

    def _encoder_input(self, flat: Tensor) -> Tensor | Params:
        """What the encoder reads of normalized flat weights ``(N, D)``: the vectors, the
        network's outputs on the probe inputs (``reads_outputs``), or its denormalized
        parameters (``reads_params``)."""
        if self.reads_outputs:
            return self.network_outputs(flat)
        if self.reads_params:
            return unflatten_params(self.denormalize(flat), self.spec)
        return flat

    def configure_optimizers(self) -> Any:
        """AdamW (no decay on biases and norm gains), then the cosine schedule if asked."""
        hp = self.hparams
        total = math.inf if hp.scheduler is None else self.trainer.estimated_stepping_batches
        return adamw_cosine(self, hp.lr, hp.weight_decay, hp.scheduler, hp.warmup_steps, total)


def adamw_cosine(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    scheduler: str | None,
    warmup_steps: int,
    total_steps: float,
) -> Any:
    """AdamW over ``module``'s parameters (no decay on biases and norm gains: pulling them to
    0 only hurts), then, with ``scheduler="cosine"``, a per-step linear warmup and cosine decay
    to 0 at ``total_steps``."""
    decay = [p for p in module.parameters() if p.dim() >= 2 and p.requires_grad]
    rest = [p for p in module.parameters() if p.dim() < 2 and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
    )
    if scheduler is None:
        return opt
    if not math.isfinite(total_steps):
        raise ConfigError(
            "scheduler=cosine: needs a finite trainer.max_epochs or trainer.max_steps"
        )
    warmup = int(warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
