"""Building blocks the encoders and decoders share: MLP stacks, pre-norm transformer layers and
the angle, spectral and entry readouts of the symmetry-aware encoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "EntryReadout",
    "GramReadout",
    "SpectralReadout",
    "check_readouts",
    "mlp_layers",
    "transformer_layer",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def mlp_layers(
    sizes: Sequence[int], activation: str, dropout: float, layer_norm: bool
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]``; norm, activation and dropout between."""
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"activation: unknown '{activation}' (choose from {', '.join(ACTIVATIONS)})"
        )
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if layer_norm:
                layers.append(nn.LayerNorm(b))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


READOUTS = {"gram": "angle", "spectral": "spectral", "entries": "entry"}


def check_readouts(**channels: int) -> None:
    """The invariant readouts' channel counts (``gram``, ``spectral``, ``entries``): >= 0,
    0 for off; a bad one is a one-line error naming the option."""
    for name, c in channels.items():
        if c < 0:
            raise ConfigError(
                f"encoder.{name}: channels of the {READOUTS[name]} readout, >= 0, got {c}"
            )


def transformer_layer(kind: type[nn.Module], d_model: int, n_heads: int, dropout: float):
    """An ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` (``kind``)."""
    # Pre-norm blocks train stably without a warmup, which matters for short zoo runs.
    return kind(
        d_model, n_heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
    )


class GramReadout(nn.Module):
    """How every two hidden units' weight vectors point: a second-order invariant readout.

    For each hidden layer, the cosines between its units' incoming vectors (rows of
    ``[W_l | b_l]``) and between their outgoing vectors (columns of ``W_{l+1}``): two
    ``(N, h, h)`` matrices. Their off-diagonal entries go through a learned pointwise MLP
    (``1 -> 16 -> channels``, an activation after each), averaged over the pairs ``i != j``.
    Permuting the units permutes both sides of a cosine matrix alike, so the mean is
    unchanged; a cosine is unchanged by a unit's positive scale; computed in the encoder's
    canonical frame, the readout is invariant to relu rescaling and tanh sign flips too.

    Why: part of what tells init schemes apart lives in these angles (an orthogonal init's
    rows are orthogonal, random ones meet at cosines of order ``1/sqrt(fan_in)``; the spectra
    the invariant features read summarize them). NP features are indexed by one entry
    ``(o, i)`` and meet only through means, so a sum over a shared index of two units'
    weights, a Gram entry, is not among what they compute, nor any function of it pair by
    pair.

    Memory: ``N x h^2 x 16`` numbers per hidden layer and side, held for the backward pass —
    nothing at the demo's widths, gigabytes at ``h`` in the thousands.

    Args:
        channels: numbers per cosine matrix (``out_dim = 2 * channels`` per hidden layer).
        activation: of the pointwise MLP.
    """

    def __init__(self, channels: int, activation: str = "relu"):
        super().__init__()
        self.phi = nn.Sequential(
            mlp_layers([1, 16, channels], activation, 0.0, False), ACTIVATIONS[activation]()
        )
        self.out_dim = 2 * channels

    @staticmethod
    def cosines(x: Tensor) -> Tensor:
        """``(N, h, d) -> (N, h, h)``: cosines between the ``h`` vectors of each network."""
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x @ x.transpose(1, 2)

    @staticmethod
    def unit_vectors(wb: Sequence[tuple[Tensor, Tensor | None]]) -> list[tuple[Tensor, Tensor]]:
        """Per hidden layer, its units' incoming vectors ``[W_l | b_l]`` ``(N, h, in + 1)``
        (``in`` without a bias) and outgoing vectors, the columns of ``W_{l+1}``
        ``(N, h, out)``."""
        out = []
        for l in range(len(wb) - 1):
            w, b = wb[l]
            incoming = w if b is None else torch.cat([w, b[..., None]], -1)
            out.append((incoming, wb[l + 1][0].transpose(1, 2)))
        return out

    def forward(self, wb: Sequence[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """Per layer ``W (N, out, in)``, ``b (N, out)`` or None -> per hidden layer
        ``(N, out_dim)``: the incoming side's numbers, then the outgoing side's."""
        out = []
        for incoming, outgoing in self.unit_vectors(wb):
            sides = []
            for g in (self.cosines(incoming), self.cosines(outgoing)):
                h = g.shape[1]
                f = self.phi(g[..., None])  # (N, h, h, C)
                diag = f.diagonal(dim1=1, dim2=2).sum(-1)  # (N, C)
                sides.append((f.sum((1, 2)) - diag) / max(h * (h - 1), 1))
            out.append(torch.cat(sides, -1))
        return out


class SpectralReadout(nn.Module):
    """The shape of every weight matrix's spectrum: an invariant readout of second order.

    For each layer, the singular values ``s_1 >= ... >= s_k`` of ``W_l`` over their root mean
    square (the shape of the spectrum; the scale is read elsewhere), each with its rank
    ``(i - 1/2) / k``, go through a learned pointwise MLP (``2 -> 16 -> channels``, an
    activation after each), averaged over ``i``: a learned summary of the spectrum that reads
    matrices of any size alike. Singular values are unchanged by permuting rows or columns and
    by flipping their signs; computed in the encoder's canonical frame, the readout is
    invariant to every symmetry the encoder is.

    Why: what sets an init scheme apart survives training mostly in the spectra (an orthogonal
    init's flat spectrum, a Gaussian's quarter circle, how each scheme scales with fan-in and
    fan-out); NP layers and message passing compute means, and the angle readout
    (:class:`GramReadout`) sees unit pairs; neither forms ``tr (W^T W)^p`` for ``p > 1`` or
    anything else of the spectrum's shape.

    Cost: one batched ``svdvals`` per layer, ``O(N out in min(out, in))``.

    Args:
        channels: numbers per weight matrix (``out_dim``).
        activation: of the pointwise MLP.
    """

    def __init__(self, channels: int, activation: str = "relu"):
        super().__init__()
        self.phi = nn.Sequential(
            mlp_layers([2, 16, channels], activation, 0.0, False), ACTIVATIONS[activation]()
        )
        self.out_dim = channels

    @staticmethod
    def spectrum(w: Tensor) -> Tensor:
        """``(N, out, in) -> (N, k)``: singular values over their root mean square."""
        s = torch.linalg.svdvals(w)
        return s / s.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-12)

    def forward(self, wb: Sequence[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """Per layer ``W (N, out, in)`` (biases are not read) -> per layer ``(N, out_dim)``."""
        out = []
        for w, _ in wb:
            s = self.spectrum(w)  # (N, k)
            k = s.shape[-1]
            rank = (torch.arange(k, dtype=s.dtype, device=s.device) + 0.5) / k
            x = torch.stack([s, rank.expand_as(s)], -1)  # (N, k, 2)
            out.append(self.phi(x).mean(1))
        return out


class EntryReadout(nn.Module):
    """How each tensor's entries are distributed: a learned first-order invariant readout.

    For each weight matrix and bias, its entries over their root mean square go through a
    learned pointwise MLP (``1 -> 16 -> channels``, an activation after each), averaged over
    the entries (a DeepSets over the entries), with the tensor's log root mean square: the
    learned counterpart of the per-tensor statistics (Unterthiner et al. 2020), which read
    moments and quantiles. Permutations only move entries and signs are fixed by the
    canonical frame, so the readout is invariant to every symmetry the encoder is.

    Why: a uniform init and a Gaussian one of the same variance differ in the entries' shape
    (the largest |w| / RMS is ~1.7 against ~3.5), Kaiming and Xavier in how the scale goes
    from layer to layer; NP layers and message passing carry both only through their mixed
    channels, and a self-supervised latent kept neither (docs/results.md).

    Memory: ``N x entries x 16`` numbers per tensor, held for the backward pass.

    Args:
        channels: learned numbers per tensor (``out_dim = channels + 1`` with its log scale;
            a layer gives ``2 * out_dim``, weight and bias).
        activation: of the pointwise MLP.
    """

    def __init__(self, channels: int, activation: str = "relu"):
        super().__init__()
        self.phi = nn.Sequential(
            mlp_layers([1, 16, channels], activation, 0.0, False), ACTIVATIONS[activation]()
        )
        self.out_dim = channels + 1

    def forward(self, wb: Sequence[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """Per layer ``W (N, out, in)``, ``b (N, out)`` or None -> per layer
        ``(N, 2 * out_dim)``: the weight's numbers, then the bias's (zeros without one, so
        networks with and without biases give one width)."""
        out = []
        for w, b in wb:
            parts = [self.summary(w)]
            parts.append(w.new_zeros(len(w), self.out_dim) if b is None else self.summary(b))
            out.append(torch.cat(parts, -1))
        return out

    def summary(self, x: Tensor) -> Tensor:
        """``(N, ...) -> (N, out_dim)``: the learned mean over the entries, the log scale."""
        x = x.flatten(1)
        rms = x.square().mean(1, keepdim=True).sqrt().clamp_min(1e-12)  # (N, 1)
        return torch.cat([self.phi((x / rms)[..., None]).mean(1), rms.log()], -1)
