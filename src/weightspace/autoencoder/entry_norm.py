"""Standardizing a zoo's networks inside an encoder: per entry (``encoder.center=entry``) or
per tensor (``encoder.center=layer``).

Each weight and bias entry ``(layer, out, in)`` is standardized by its own mean and std over
the zoo's training members: ``(x - mean[entry]) / std[entry]``. The statistics are running
buffers (a ``BatchNorm1d`` without affine parameters and with ``momentum=None``: the cumulative
mean over every training batch seen; evaluation uses them), so the encoder needs nothing from
the datamodule and its checkpoint carries them.

Why: in a zoo whose members share one initialization (``zoo.hparams.seed`` fixed, the
convention of the field's INR datasets: DWSNets normalizes its MNIST INRs the same way, per
entry over the training set), what tells two members apart is a small deviation from that
shared start: on the digits INR zoo the first layer's entries differ by 0.13 between members
on a scale of 8.5 (w0 = 30). Centred per entry, the deviations reach the encoder at O(1).

Symmetry: the mean and std live in one frame, the zoo's. Units of all members permuted
alike change nothing, but a permutation of one member's units alone does (the encoder is
still equivariant to permutations of its *standardized* input). For zoos whose members start
from independent inits this breaks the invariance the encoders are built for: keep it off there
(the default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import ConfigError

__all__ = ["CENTERS", "EntryStandardizer", "LayerScaler"]

CENTERS = (None, "entry", "layer")


class EntryStandardizer(nn.Module):
    """Per-entry running standardization of per-layer ``(W (N, out, in), b (N, out) | None)``.

    Args:
        shapes: ``(out, in)`` of each layer.
        bias: whether the layers have biases.
    """

    def __init__(self, shapes: list[tuple[int, int]], bias: bool = True):
        super().__init__()

        def norm(n: int) -> nn.BatchNorm1d:
            return nn.BatchNorm1d(n, affine=False, momentum=None, eps=1e-8)

        self.weights = nn.ModuleList(norm(o * i) for o, i in shapes)
        self.biases = nn.ModuleList(norm(o) for o, _ in shapes) if bias else None

    def forward(self, wb: list[tuple[Tensor, Tensor | None]]) -> list[tuple[Tensor, Tensor | None]]:
        out = []
        for l, (w, b) in enumerate(wb):
            w = self._norm(self.weights[l], w.flatten(1)).view_as(w)  # (N, out, in)
            if b is not None and self.biases is not None:
                b = self._norm(self.biases[l], b)  # (N, out)
            out.append((w, b))
        return out

    def _norm(self, bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
        """``bn`` on ``x`` ``(N, n)``; a training batch of one network (no std to take) reads
        the running statistics instead of updating them."""
        training = self.training and len(x) > 1
        if training:
            bn.num_batches_tracked += 1
        momentum = 1.0 / float(bn.num_batches_tracked) if training else 0.0  # cumulative mean
        return F.batch_norm(
            x, bn.running_mean, bn.running_var, training=training, momentum=momentum, eps=bn.eps
        )


class LayerScaler(nn.Module):
    """Each weight and bias tensor divided by its running root mean square over the training
    members (``encoder.center=layer``): one number per tensor, so every symmetry is kept
    (permutations, sign flips: a tensor's mean square is the same in every frame; rescaling
    is canonicalized before), and no tensor reaches the encoder at a scale far from 1.

    Why: a zoo's tensors can differ in scale by orders of magnitude (an INR's output layer
    ~0.01, its first layer ~1); a supervised graph encoder on such a zoo sat at chance for
    16-60 of 80 epochs, depending on the seed, before it learned anything
    (docs/results.md, "INRs from a low-frequency init").
    """

    def __init__(self, n_layers: int, bias: bool = True):
        super().__init__()
        self.register_buffer("mean_square", torch.ones(n_layers, 2))  # (layer, weight | bias)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.bias = bias

    def forward(self, wb: list[tuple[Tensor, Tensor | None]]) -> list[tuple[Tensor, Tensor | None]]:
        if self.training and len(wb[0][0]) > 1:
            with torch.no_grad():
                ms = torch.stack(
                    [
                        torch.stack(
                            [
                                w.square().mean(),
                                b.square().mean() if b is not None else w.new_ones(()),
                            ]
                        )
                        for w, b in wb
                    ]
                )
                self.count += 1
                first = self.count == 1  # the running mean starts at the first batch's
                self.mean_square.copy_(
                    torch.where(first, ms, self.mean_square + (ms - self.mean_square) / self.count)
                )
        scale = self.mean_square.clamp_min(1e-12).rsqrt()
        return [
            (w * scale[l, 0], None if b is None else b * scale[l, 1]) for l, (w, b) in enumerate(wb)
        ]


def make_standardizer(center: str | None, shapes, bias: bool) -> nn.Module | None:
    """The standardizer ``center`` asks for (``None``: none); ConfigError naming the option."""
    if center not in CENTERS:
        raise ConfigError(f"encoder.center: '{center}' (choose null, entry or layer)")
    if center is None:
        return None
    shapes = list(shapes)
    return EntryStandardizer(shapes, bias) if center == "entry" else LayerScaler(len(shapes), bias)
