"""A neural-functional encoder: permutation-equivariant NP layers over each layer's weights.

Zhou et al. 2023 ("Permutation Equivariant Neural Functionals", NFN): the weight space of an
MLP is a list of matrices ``W_l (out_l, in_l)`` and biases ``b_l (out_l,)`` whose hidden units
may be permuted (rows of ``W_l`` and ``b_l``, columns of ``W_{l+1}``). A linear map that
commutes with every such permutation can only mix, per channel, each entry with the means the
permutations leave alone: its row's and column's means, the neighbour layers' means and
biases that share its units, and every layer's full means (:class:`NPLayer`). Stacked with
pointwise nonlinearities and followed by means over the hidden units, they give a latent that
no permutation of hidden units moves (:class:`NFNEncoder`).

The layers are written here rather than taken from the ``nfn`` package: theirs are 1x1
convolutions on channels-first ``(B, C, out, in)`` features (``NPLinear``; ``HNPLinear``
gives the first and last layers per-input/per-output weights, ``O((C * n_in)^2)`` parameters,
too many for 784-pixel inputs), while channels-last ``(N, out, in, C)`` makes every term one
``nn.Linear`` and lets the weights arrive in the zoo's own ``(N, out, in)`` layout. Input and
output units are not symmetries of the zoo's networks: learned embeddings of the input columns
of ``W_0`` and of the output rows of the last layer break those (NP with position encodings,
as in the paper), and the readout keeps the per-input and per-output means (HNP pooling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from weightspace.autoencoder.blocks import (
    ACTIVATIONS,
    EntryReadout,
    GramReadout,
    SpectralReadout,
    check_readouts,
    mlp_layers,
)
from weightspace.autoencoder.entry_norm import make_standardizer
from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec, Params, layers
from weightspace.symmetry import (
    HOMOGENEOUS_ACTIVATIONS,
    ODD_ACTIVATIONS,
    canonical_unit_frame,
)

__all__ = ["NFNEncoder", "NPLayer"]

# Per layer: weights (N, out, in, C) and biases (N, out, C), channels last.
Features = list[tuple[Tensor, Tensor]]


class NPLayer(nn.Module):
    """One permutation-equivariant linear map of weight-space features, ``C_in -> C_out``.

    With ``r_l = mean_rows W_l (N, in_l, C)``, ``c_l = mean_cols W_l (N, out_l, C)`` and
    ``g`` every layer's full means of ``W`` and ``b`` ``(N, 2 L C)``::

        W'_l[o, i] = A W_l[o, i] + R [r_l, c_{l-1}, b_{l-1}][i] + K [c_l, b_l, r_{l+1}][o] + G g
        b'_l[o]    =                                   K' [c_l, b_l, r_{l+1}][o] + G' g

    (terms of a missing neighbour left out; A, R, K, G, K', G' per layer). Column ``i`` of
    ``W_l`` is unit ``i`` of layer ``l - 1``, hence its ``c_{l-1}`` and ``b_{l-1}``; row ``o``
    is unit ``o`` of layer ``l``, read as a column by ``W_{l+1}``, hence ``r_{l+1}``. These are
    the NP layer's terms (Zhou et al. 2023, which treat hidden and i/o units alike);
    ``io_embed`` adds learned embeddings to the input columns of ``W_0`` and the output rows
    of the last layer first, so inputs and outputs are told apart (hidden units still are not).

    Args:
        shapes: ``(out, in)`` of each layer.
        c_in, c_out: channels in and out.
        io_embed: add the input / output embeddings.
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], c_in: int, c_out: int, io_embed: bool):
        super().__init__()
        n = len(shapes)
        self.c_out = c_out
        self.point = nn.ModuleList()  # A: each entry, with the constant term
        self.rows = nn.ModuleList()  # R: broadcast along the rows (per input unit)
        self.cols = nn.ModuleList()  # K and K': broadcast along the columns (per output unit)
        self.bias_const = nn.Parameter(torch.zeros(n, c_out))  # b'_l's constant term
        for l in range(n):
            n_rows = 1 + 2 * (l > 0)
            n_cols = 2 + (l < n - 1)
            self.point.append(nn.Linear(c_in, c_out))
            self.rows.append(nn.Linear(n_rows * c_in, c_out, bias=False))
            self.cols.append(nn.Linear(n_cols * c_in, 2 * c_out, bias=False))
        self.glob = nn.Linear(2 * n * c_in, 2 * n * c_out, bias=False)  # G and G', all layers
        # Every output sums several maps: draw them with the fan-in of all together, as one
        # nn.Linear over the concatenated inputs would be.
        glob = self.glob.weight.data.view(n, 2 * c_out, -1)  # layer l's rows of G and G'
        for l in range(n):
            fan_in = (1 + (1 + 2 * (l > 0)) + (2 + (l < n - 1)) + 2 * n) * c_in
            bound = 1.0 / math.sqrt(fan_in)
            for p in (*self.point[l].parameters(), self.rows[l].weight, self.cols[l].weight):
                nn.init.uniform_(p, -bound, bound)
            nn.init.uniform_(glob[l], -bound, bound)
        if io_embed:
            (_, n_in), (n_out, _) = shapes[0], shapes[-1]
            self.in_embed = nn.Parameter(torch.randn(n_in, c_in))  # input columns of W_0
            self.out_embed = nn.Parameter(torch.randn(n_out, c_in))  # output rows of W_{L-1}
            self.out_bias_embed = nn.Parameter(torch.randn(n_out, c_in))  # and of b_{L-1}
        else:
            self.in_embed = self.out_embed = self.out_bias_embed = None

    def forward(self, feats: Features) -> Features:
        feats = list(feats)
        if self.in_embed is not None:
            w, b = feats[0]
            feats[0] = (w + self.in_embed, b)  # (N, out_0, in, C) + (in, C)
            w, b = feats[-1]
            feats[-1] = (w + self.out_embed[:, None], b + self.out_bias_embed)
        n = len(feats)
        # Sums, then the division on the small result: a mean's backward would divide the
        # whole broadcast gradient.
        row_means = [w.sum(1) / w.shape[1] for w, _ in feats]  # (N, in_l, C)
        col_means = [w.sum(2) / w.shape[2] for w, _ in feats]  # (N, out_l, C)
        g = torch.cat([r.mean(1) for r in row_means] + [b.mean(1) for _, b in feats], -1)
        g = self.glob(g).view(len(g), n, 2, self.c_out)  # (N, L, 2, C_out)
        out = []
        for l, (w, b) in enumerate(feats):
            along_rows = [row_means[l]]
            if l > 0:
                along_rows += [col_means[l - 1], feats[l - 1][1]]
            along_cols = [col_means[l], b]
            if l < n - 1:
                along_cols.append(row_means[l + 1])
            r = self.rows[l](torch.cat(along_rows, -1))  # (N, in_l, C_out)
            k_w, k_b = self.cols[l](torch.cat(along_cols, -1)).chunk(2, -1)  # (N, out_l, C_out)
            # The broadcast terms summed small first, then added in place: the full-size
            # (N, out, in, C_out) tensor is written once per term, never copied.
            w_new = self.point[l](w)  # (N, out_l, in_l, C_out)
            w_new += r[:, None]
            w_new += (k_w + g[:, l, 0, None])[:, :, None]
            b_new = k_b + g[:, l, 1, None] + self.bias_const[l]
            out.append((w_new, b_new))
        return out


class NFNEncoder(nn.Module):
    """Latents of MLPs from their own weights through NP layers, invariant to every
    function-preserving symmetry of hidden units the activation has.

    - **Scale and sign.** NP layers see permutations only. The networks are put in a
      canonical form of the other symmetries first, as the activation allows
      (:func:`weightspace.symmetry.canonical_scale`: unit incoming norm for relu,
      leaky_relu, identity; :func:`~weightspace.symmetry.canonical_signs`: positive incoming
      sum for tanh, identity); both are unchanged by permutations, so the latent is invariant
      to positive rescaling (relu) and sign flips (tanh) of units as well. Units are not
      sorted: the layers need no order. ``canonical=False`` skips this (permutations only);
      ``canonical="sign"`` canonicalizes sign flips only (tanh) and leaves relu units' scales as
      trained: a zoo's distribution is unchanged by permutations and sign flips of its
      members' units (their inits are), not by rescaling them — gradient flow keeps each relu
      unit's balance ‖incoming‖² − ‖outgoing‖² from its init (Du et al. 2018), so the scales
      carry the init and the training, and an encoder invariant to rescaling cannot read them.
    - **Input scale.** Each network's layer ``l`` (weights and bias together) is divided by
      its own root mean square: one number per network and layer, unchanged by permutations
      of its units, so zoo members whose scales differ by orders of magnitude (a constant
      init, the last layer after rescaling) all enter the layers at O(1); the log of each
      scale goes to the readout, so nothing is lost.
    - **Centring** (``center=entry``, off by default): each entry standardized by its running
      mean and std over the training members, after canonicalizing and before the per-layer
      scale (:mod:`~weightspace.autoencoder.entry_norm`): for zoos of one shared init; it
      fixes a frame, so per-member permutation invariance is given up.
    - **Layers.** ``n_layers`` NP layers of ``channels`` channels, ``activation`` between
      them (and after the last).
    - **Readout.** Means over the hidden units (every layer's full weight and bias means, the
      first layer's per-input means, the last layer's per-output means and biases: HNP
      pooling), with the log scales, through an MLP (``hidden``) to ``latent_dim``.
    - **Angles** (``gram=C``, off by default): :class:`GramReadout`'s ``C`` numbers per
      hidden layer and side join the readout: how the units' weight vectors point relative
      to each other, which NP layers do not compute.
    - **Spectra** (``spectral=C``, off by default): :class:`SpectralReadout`'s ``C`` numbers
      per layer join the readout: the shape of each weight matrix's singular values, in the
      canonical frame.
    - **Entries** (``entries=C``, off by default): :class:`EntryReadout`'s ``C + 1`` numbers
      per tensor join the readout: how its entries are distributed, and its log scale.

    Reads the networks' denormalized parameters ``{name: (N, *shape)}`` (``reads_params``).
    """

    reads_params = True

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        channels: int = 16,
        n_layers: int = 2,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        io_embed: bool = True,
        canonical: bool | str = True,
        layer_norm: bool = True,
        center: str | None = None,
        gram: int = 0,
        spectral: int = 0,
        entries: int = 0,
    ):
        super().__init__()
        if spec.n_layers < 2:
            raise ConfigError(
                f"encoder.kind: nfn needs networks with a hidden layer, got widths "
                f"{list(spec.widths)}"
            )
        if channels < 1 or n_layers < 1:
            raise ConfigError(
                f"encoder.channels, encoder.n_layers: must be >= 1, got {channels}, {n_layers}"
            )
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"encoder.activation: unknown '{activation}' (choose from {', '.join(ACTIVATIONS)})"
            )
        check_readouts(gram=gram, spectral=spectral, entries=entries)
        if canonical not in (True, False, "sign"):
            raise ConfigError(f"encoder.canonical: {canonical!r} (choose true, false or sign)")
        self.spec = spec
        self.scale = canonical is True and spec.activation in HOMOGENEOUS_ACTIVATIONS
        self.sign = bool(canonical) and spec.activation in ODD_ACTIVATIONS
        shapes = spec.layer_shapes()
        self.standardize = make_standardizer(center, shapes, spec.bias)
        sizes = [1] + [channels] * n_layers
        self.layers = nn.ModuleList(
            NPLayer(shapes, a, b, io_embed) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.act = ACTIVATIONS[activation]()
        n_in, n_out, n = spec.widths[0], spec.widths[-1], spec.n_layers
        n_pooled = channels * (2 * n + n_in + 2 * n_out) + n  # + the log scales
        self.gram = GramReadout(gram, activation) if gram else None
        n_pooled += (n - 1) * self.gram.out_dim if gram else 0
        self.spectral = SpectralReadout(spectral, activation) if spectral else None
        n_pooled += n * spectral
        self.entries = EntryReadout(entries, activation) if entries else None
        n_pooled += n * 2 * self.entries.out_dim if entries else 0
        self.head = mlp_layers([n_pooled, *hidden, latent_dim], activation, 0.0, layer_norm)

    def canonicalize(self, params: Params) -> Params:
        """The networks in the canonical form of their scale / sign symmetries."""
        return canonical_unit_frame(params, self.spec, self.scale, self.sign)

    def features(self, params: Params) -> tuple[Features, Tensor]:
        """Per layer ``W (N, out, in, 1)``, ``b (N, out, 1)`` at unit RMS, and the log RMS
        ``(N, L)``."""
        feats, log_scales = [], []
        wb = list(layers(params, self.spec))  # (N, out, in), (N, out) or None
        if self.standardize is not None:  # encoder.center=entry
            wb = self.standardize(wb)
        for w, b in wb:
            b = w.new_zeros(w.shape[:2]) if b is None else b
            sq = w.square().sum((1, 2)) + b.square().sum(1)
            rms = (sq / (w[0].numel() + b[0].numel())).sqrt().clamp_min(1e-6)  # (N,)
            feats.append(
                (w[..., None] / rms[:, None, None, None], b[..., None] / rms[:, None, None])
            )
            log_scales.append(rms.log())
        return feats, torch.stack(log_scales, -1)

    def pool(self, feats: Features) -> Tensor:
        """Means over the hidden units ``(N, C * (2 L + n_in + 2 n_out))``."""
        full = [w.sum((1, 2)) / (w.shape[1] * w.shape[2]) for w, _ in feats]  # (N, C) each
        full += [b.mean(1) for _, b in feats]
        w0, (w_last, b_last) = feats[0][0], feats[-1]
        per_io = [w0.sum(1) / w0.shape[1], w_last.sum(2) / w_last.shape[2], b_last]
        # (N, n_in, C), (N, n_out, C) x 2
        return torch.cat(full + [x.flatten(1) for x in per_io], -1)

    def forward(self, params: Params) -> Tensor:  # {name: (N, *shape)} -> (N, latent)
        canon = self.canonicalize(params)
        feats, log_scales = self.features(canon)
        for layer in self.layers:
            feats = [(self.act(w), self.act(b)) for w, b in layer(feats)]
        pooled = [self.pool(feats), log_scales]
        if self.gram is not None:
            pooled += self.gram(list(layers(canon, self.spec)))
        if self.spectral is not None:
            pooled += self.spectral(list(layers(canon, self.spec)))
        if self.entries is not None:
            pooled += self.entries(list(layers(canon, self.spec)))
        return self.head(torch.cat(pooled, -1))
