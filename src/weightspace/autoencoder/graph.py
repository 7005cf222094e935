"""A graph metanetwork over a network's neurons: parameters -> latents ``(N, latent_dim)``.

The approach of Neural Graphs (Kofinas et al., ICLR 2024) and graph metanetworks (GMN, Lim et
al., ICLR 2024). An MLP is a graph with one node per neuron of every layer, the inputs
included, and one directed edge per weight (from the unit it reads to the unit it feeds;
its feature is the weight). A node carries its bias (inputs have none), its layer's
embedding and its type (input, hidden, output). Input and output neurons have an identity
(a pixel, a class), so they also get an embedding of their index; hidden neurons get nothing
index-based. Message-passing steps then update nodes and edges, and an invariant readout
pools them into the latent.

**Dense, not sparse.** The edges of layer ``l`` are its weight matrix: a batch of ``N``
networks of one spec is a tensor ``(c, N, out, in)`` of edge features per layer (channels
leading, so channel mixing is one wide matrix product), and a step is a few batched matmuls
per layer (no edge lists, no scatter); memory is bounded by the batch. On the demo's
[64, 32, 32, 10] networks an encoder pass (forward + backward) costs about 12x the MLP
encoder's and a training step about 3x (``benchmarks/bench_encoders.py``).

**Several architectures.** The message passing reads the shapes of the tensors it gets, and
every learned function is shared by all layers (nodes tell layers apart by their layer
embedding), so it takes networks of any width and depth. Only the readout ``layers`` (a slot
per hidden layer) is sized by the spec's depth; ``readout="pooled"`` (first, last and mean
hidden layer; first, last and mean layer of edges) reads any depth up to the spec's, any
hidden widths, and the spec's input and output widths: one encoder for a zoo mixing
architectures (:mod:`~weightspace.autoencoder.mixed`), each call one architecture.

**Symmetry.**

- *Permutations of hidden units*, by construction: node and edge functions are shared by all
  nodes (edges) of a kind, messages are averaged over a node's edges, and the readout averages
  each hidden layer's nodes. Permuting hidden units permutes nodes and edges alike and
  leaves the latent unchanged, for every activation.
- *Positive rescaling of relu / leaky_relu units, sign flips of tanh units*: by
  canonicalizing inside the encoder, before the graph is built (``symmetry="auto"``):
  :func:`~weightspace.symmetry.canonical_scale` (unit incoming norm) where every activation of
  the zoo is positively homogeneous, :func:`~weightspace.symmetry.canonical_signs` where every
  one is odd. Both are function-preserving and map a whole orbit to one representative, and
  neither depends on the order of hidden units, so the latent is invariant to rescaling and
  sign flips *and* permutations. A zoo mixing activations of different symmetries (relu and
  tanh) cannot be canonicalized per member here (the encoder does not see which member has
  which activation): ``ConfigError`` naming ``encoder.symmetry``, unless
  ``symmetry="permutation"`` (no canonicalization: permutation-invariant only).
  ``symmetry="sign"`` canonicalizes sign flips only and leaves relu units' scales as trained
  (they carry the init: :class:`~weightspace.autoencoder.nfn.NFNEncoder`).

**Probe features** (Neural Graphs' "probe features"; ``probe=K``, off by default): each
node also reads what its neuron computes on ``K`` fixed inputs of the zoo's task (the model's
first ``K`` probe inputs; the inputs' nodes their values): hidden units their activations,
outputs the network's outputs. They are computed from the canonical parameters, so every
symmetry above is kept (a permuted unit's activations move with it). On an INR zoo the output
nodes' features are the fitted signal at ``K`` coordinates: the encoder reads a little of the
function as well as the weights.

Input: the networks' own effective parameters ``{name: (N, *shape)}`` (``reads_params``:
the model denormalizes them; weight-normalized zoos arrive as effective weights), and the
zoo's activations (``reads_activations``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from weightspace.autoencoder.blocks import (
    EntryReadout,
    GramReadout,
    SpectralReadout,
    check_readouts,
    mlp_layers,
)
from weightspace.autoencoder.entry_norm import make_standardizer
from weightspace.errors import ConfigError
from weightspace.nets.spec import ACTIVATIONS, MLPSpec, Params, bias_name, layers, weight_name
from weightspace.symmetry import (
    HOMOGENEOUS_ACTIVATIONS,
    ODD_ACTIVATIONS,
    canonical_unit_frame,
)

__all__ = ["GraphEncoder", "MessagePassing"]

SYMMETRIES = ("auto", "sign", "permutation")
READOUTS = ("layers", "pooled")
INPUT, HIDDEN, OUTPUT = 0, 1, 2  # node types


def unit_symmetries(activation: str) -> tuple[bool, bool]:
    """(positive rescaling, sign flip) of a hidden unit that preserve the function."""
    return activation in HOMOGENEOUS_ACTIVATIONS, activation in ODD_ACTIVATIONS


def scalar_features(x: Tensor, fan_in: int, dim: int) -> Tensor:
    """Features of weights or biases ``x`` of a layer with ``fan_in`` inputs, stacked at
    ``dim``: the value in units of ``1 / sqrt(fan_in)`` (an init's scale; a canonical row's
    entries) and its symmetric log ``sign(x) log(1 + |x|)`` (large values compressed; 8x
    cheaper than ``asinh`` on CPU). Elementwise: equivariant to anything."""
    x = x * math.sqrt(fan_in)
    return torch.stack([x, torch.sign(x) * torch.log1p(x.abs())], dim)


def channel_mix(weight: Tensor, e: Tensor, add: Tensor) -> Tensor:
    """``add + weight @ e`` on the channels of edges ``e`` ``(c, N, out, in)``; ``add``
    broadcasts to ``(c', N, out, in)``. Channels lead, so this is one wide matrix product
    ``(c', c) @ (c, N * out * in)`` (forward and backward) with the addition fused, instead of
    millions of thin ones: 2-3x faster on CPU."""
    shape = (weight.shape[0], *e.shape[1:])
    y = torch.addmm(add.expand(shape).reshape(shape[0], -1), weight, e.reshape(e.shape[0], -1))
    return y.view(shape)


class MessagePassing(nn.Module):
    """One step over the dense graph: node updates from messages, then edge updates.

    Nodes ``h`` ``(N, T, d)``: every layer's neurons one after the other (the inputs first),
    layer ``k`` at ``h[:, offsets[k]:offsets[k + 1]]``; edges ``e[l]`` ``(c, N, n_{l+1}, n_l)``
    (layer ``l``'s weights, channels leading). Along each edge both ways (inputs hear from the
    units they feed, outputs from the units they read) a bilinear message: the outer product
    of the edge's channels and a projection of the sending node, averaged over the receiver's
    edges (an edge-conditioned convolution), ``c x m`` numbers. A node adds an MLP of itself
    and its two messages; an edge adds an MLP of itself and its two end nodes. Every function is
    shared by all layers.
    """

    def __init__(self, d: int, c: int, m: int, update_edges: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.send = nn.Linear(d, 2 * m)  # forward and backward
        # The node MLP reads the raw messages: a linear map of them first would fold into it.
        self.node = nn.Sequential(nn.Linear(d + 2 * c * m, d), nn.GELU(), nn.Linear(d, d))
        self.update_edges = update_edges
        if update_edges:
            self.edge_self = nn.Linear(c, c, bias=False)
            self.edge_out = nn.Linear(c, c, bias=False)
            self.edge_nodes = nn.Linear(d, 2 * c)  # as destination, as source

    def forward(
        self, h: Tensor, e: list[Tensor], offsets: list[int]
    ) -> tuple[Tensor, list[Tensor]]:
        n = h.shape[0]
        hn = self.norm(h)
        send_fwd, send_bwd = self.send(hn).chunk(2, -1)  # (N, T, m) each
        fwd, bwd = [], []  # per layer: (N, n_k, c * m) from the layer below / above
        for l, el in enumerate(e):
            _, _, o, i = el.shape
            src = send_fwd[:, offsets[l] : offsets[l + 1]] / i  # (N, i, m): a mean over in
            dst = send_bwd[:, offsets[l + 1] : offsets[l + 2]] / o  # (N, o, m)
            msg = torch.matmul(el, src)  # (c, N, o, m)
            fwd.append(msg.permute(1, 2, 0, 3).reshape(n, o, -1))
            msg = torch.matmul(el.transpose(-1, -2), dst)  # (c, N, i, m)
            bwd.append(msg.permute(1, 2, 0, 3).reshape(n, i, -1))
        none_in = h.new_zeros(n, offsets[1], fwd[0].shape[-1])  # the inputs read nothing
        none_out = h.new_zeros(n, offsets[-1] - offsets[-2], bwd[0].shape[-1])  # nor feed
        fwd = torch.cat([none_in, *fwd], 1)  # (N, T, c * m)
        bwd = torch.cat([*bwd, none_out], 1)
        h = h + self.node(torch.cat([hn, fwd, bwd], -1))
        if not self.update_edges:
            return h, e
        as_dst, as_src = self.edge_nodes(self.norm(h)).permute(2, 0, 1).chunk(2)  # (c, N, T)
        new = []
        for l, el in enumerate(e):
            ends = (
                as_dst[..., offsets[l + 1] : offsets[l + 2], None]  # (c, N, o, 1)
                + as_src[..., None, offsets[l] : offsets[l + 1]]  # (c, N, 1, i)
            )
            # relu: on millions of edges gelu costs 5x as much
            update = torch.relu(channel_mix(self.edge_self.weight, el, ends))  # (c, N, o, i)
            new.append(channel_mix(self.edge_out.weight, update, el))  # residual
        return h, new


class GraphEncoder(nn.Module):
    """Graph metanetwork over the neurons (see the module's docstring).

    Args:
        spec: the zoo's architecture (input and output widths, depth, bias).
        latent_dim: the latent width.
        activations: the zoo's activations (the model passes them; ``None``: the spec's).
        hidden: node feature width ``d``.
        edge_dim: edge feature width ``c`` (the edges dominate memory: ``N x weights x c``).
        message_dim: width ``m`` of a sending node's projection (a message is ``c x m``).
        n_layers: message-passing steps.
        readout_hidden: width of the MLP from the pooled graph to the latent.
        symmetry: ``auto`` (canonical scale / signs where the zoo's activations allow, then
            permutation-invariant message passing), ``sign`` (canonical signs only: relu
            units' scales stay as trained, where the init and the training leave their mark;
            :class:`~weightspace.autoencoder.nfn.NFNEncoder`'s ``canonical="sign"``) or
            ``permutation`` (no canonicalization).
        center: ``None`` (the default) or ``entry``: each entry standardized by its running
            mean and std over the training members after canonicalizing
            (:mod:`~weightspace.autoencoder.entry_norm`; for zoos of one shared init: it fixes
            a frame, so per-member permutation invariance is given up); or ``layer``: each
            tensor divided by its running RMS over the training members (every symmetry kept;
            for zoos whose tensors differ in scale by orders of magnitude, e.g. INRs).
        readout: ``layers``: the mean node of each hidden layer, the output nodes in order, the
            mean input node and the mean edge of each layer, then an MLP; ``pooled``: the
            first, last and mean over hidden layers of those layer means (and of the edges'),
            so one encoder reads networks of any depth up to ``spec``'s and any hidden widths.
            Both are invariant to hidden permutations.
        probe: ``K``, the number of probe inputs whose activations every node reads (0: none).
        probe_inputs: ``(>= K, in)`` inputs of the zoo's task (the model passes its probe
            inputs; the first ``K`` are kept, a buffer that travels in the state dict).
        gram: ``C``, channels of the angle readout
            (:class:`~weightspace.autoencoder.blocks.GramReadout`: the cosines between every
            two hidden units' weight vectors in the canonical frame, a learned map, means over
            the pairs; per hidden layer with ``readout=layers``, first / last / mean with
            ``pooled``; 0: off). Message passing meets two units' weights only two hops
            apart and summed against every unit's state; the readout gives each pair's
            angle directly.
        spectral: ``C``, channels of the spectral readout
            (:class:`~weightspace.autoencoder.blocks.SpectralReadout`: a learned summary of
            each weight matrix's singular values in the canonical frame; per layer with
            ``readout=layers``, first / last / mean with ``pooled``; 0: off).
        entries: ``C``, channels of the entry readout
            (:class:`~weightspace.autoencoder.blocks.EntryReadout`: a learned summary of how
            each tensor's entries are distributed, and its log scale, in the canonical frame;
            per layer with ``readout=layers``, first / last / mean with ``pooled``; 0: off).
    """

    reads_params = True
    reads_activations = True
    reads_probe_inputs = True

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        activations: Sequence[str] | None = None,
        hidden: int = 64,
        edge_dim: int = 4,
        message_dim: int = 16,
        n_layers: int = 3,
        readout_hidden: int = 256,
        symmetry: str = "auto",
        center: str | None = None,
        readout: str = "layers",
        probe: int = 0,
        probe_inputs: Tensor | None = None,
        gram: int = 0,
        spectral: int = 0,
        entries: int = 0,
    ):
        super().__init__()
        if readout not in READOUTS:
            raise ConfigError(f"encoder.readout: '{readout}' (choose layers or pooled)")
        if readout == "pooled" and center is not None:
            raise ConfigError(
                f"encoder.center: {center} standardizes the tensors of one architecture; "
                "readout=pooled reads several: set encoder.center=null"
            )
        if symmetry not in SYMMETRIES:
            raise ConfigError(
                f"encoder.symmetry: '{symmetry}' (choose {', '.join(SYMMETRIES[:-1])} or "
                f"{SYMMETRIES[-1]})"
            )
        acts = list(dict.fromkeys(activations or [spec.activation]))
        kinds = {unit_symmetries(a) for a in acts}
        if symmetry == "sign":
            kinds = {(False, sign) for _, sign in kinds}
        if symmetry != "permutation" and len(kinds) > 1:
            raise ConfigError(
                f"encoder.symmetry: {symmetry} cannot canonicalize a zoo mixing {', '.join(acts)} "
                "(their units have different scale / sign symmetries); use one activation per "
                "zoo, or encoder.symmetry=permutation (invariant to permutations only)"
            )
        if probe < 0:
            raise ConfigError(f"encoder.probe: {probe}, must be >= 0")
        check_readouts(gram=gram, spectral=spectral, entries=entries)
        if probe and len(acts) > 1:
            raise ConfigError(
                f"encoder.probe: runs each network, and this zoo mixes {', '.join(acts)} (the "
                "encoder does not see which member has which); set encoder.probe=0"
            )
        if probe and probe_inputs is not None and len(probe_inputs) < probe:
            raise ConfigError(
                f"encoder.probe: {probe} probe inputs asked, the model has {len(probe_inputs)} "
                "(model.n_probe)"
            )
        self.spec = spec
        self.readout = readout
        self.scale, self.sign = (False, False) if symmetry == "permutation" else kinds.pop()
        self.canon_spec = replace(spec, activation=acts[0])  # one symmetry kind: acts[0]'s
        self.standardize = make_standardizer(center, spec.layer_shapes(), spec.bias)
        d, c = hidden, edge_dim
        self.edge_in = nn.Linear(2, c)
        self.edge_in2 = nn.Linear(c, c)  # the edges' first features: an MLP of the weight
        self.bias_in = nn.Sequential(nn.Linear(2, d), nn.GELU(), nn.Linear(d, d))
        self.node_type = nn.Embedding(3, d)
        self.layer_emb = nn.Embedding(spec.n_layers + 1, d)
        self.input_pos = nn.Embedding(spec.widths[0], d)
        self.output_pos = nn.Embedding(spec.widths[-1], d)
        self.probe_in = None
        if probe:
            x = torch.zeros(probe, spec.widths[0]) if probe_inputs is None else probe_inputs
            self.register_buffer("probe_x", x[:probe].detach().float().clone())  # (K, in)
            self.probe_in = nn.Sequential(nn.Linear(2 * probe, d), nn.GELU(), nn.Linear(d, d))
        # The last step's edge update would reach only the edges' mean: skipped.
        self.steps = nn.ModuleList(
            MessagePassing(d, c, message_dim, update_edges=k < n_layers - 1)
            for k in range(n_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.gram = GramReadout(gram) if gram else None
        self.spectral = SpectralReadout(spectral) if spectral else None
        self.entries = EntryReadout(entries) if entries else None
        per_layer = 2 * self.entries.out_dim if entries else 0  # weight, bias
        if readout == "layers":
            width = d * (spec.n_layers - 1) + d * spec.widths[-1] + d + c * spec.n_layers
            width += (spec.n_layers - 1) * self.gram.out_dim if gram else 0
            width += spec.n_layers * (spectral + per_layer)
        else:
            width = 3 * d + d * spec.widths[-1] + d + 3 * c
            width += 3 * self.gram.out_dim if gram else 0
            width += 3 * (spectral + per_layer)
        self.head = mlp_layers([width, readout_hidden, latent_dim], "gelu", 0.0, True)

    def spec_of(self, params: Params) -> MLPSpec:
        """The architecture of ``params`` (``{name: (N, *shape)}``), checked against what this
        encoder reads: its spec's, or with ``readout=pooled`` any hidden widths and a depth up
        to its spec's (same input and output widths, bias)."""
        n_layers = sum(1 for k in params if k.endswith(".weight"))
        widths = tuple(
            [params[weight_name(0)].shape[-1]]
            + [params[weight_name(l)].shape[-2] for l in range(n_layers)]
        )
        spec = replace(self.spec, widths=widths)
        ok = spec == self.spec or (
            self.readout == "pooled"
            and 1 <= n_layers <= self.spec.n_layers
            and widths[0] == self.spec.widths[0]
            and widths[-1] == self.spec.widths[-1]
            and (bias_name(0) in params) == self.spec.bias
        )
        if not ok:
            raise ConfigError(
                f"encoder: reads {'-'.join(map(str, self.spec.widths))} networks"
                + (
                    " (pooled: any hidden widths, depth <= its own)"
                    if self.readout == "pooled"
                    else ""
                )
                + f", got {'-'.join(map(str, widths))}"
                + ("" if self.readout == "pooled" else "; encoder.readout=pooled reads several")
            )
        return spec

    def canonical(self, params: Params) -> list[tuple[Tensor, Tensor | None]]:
        """Per layer ``(W (N, out, in), b (N, out) or None)``: the canonical representative
        of each network's scale / sign orbit (as the zoo's activations allow), detached."""
        spec = self.spec_of(params)
        p = {k: v.detach() for k, v in params.items()}
        p = canonical_unit_frame(
            p, replace(spec, activation=self.canon_spec.activation), self.scale, self.sign
        )
        return list(layers(p, spec))

    def probe_activations(self, wb: list[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        """Per layer of nodes (the inputs first), each node's values on the ``K`` probe
        inputs, ``(N, n_k, K)``: the inputs' coordinates, hidden units' activations, the
        outputs."""
        act = ACTIVATIONS[self.canon_spec.activation]
        x = self.probe_x.to(wb[0][0].dtype).t().expand(len(wb[0][0]), -1, -1)  # (N, in, K)
        out = [x]
        for l, (w, b) in enumerate(wb):
            x = torch.matmul(w, x) if b is None else torch.baddbmm(b.unsqueeze(-1), w, x)
            if l < len(wb) - 1:
                x = act(x)
            out.append(x)  # (N, o, K)
        return out

    def graph(self, wb: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, list[Tensor]]:
        """Initial node features ``(N, T, d)`` (every layer's neurons, the inputs first) and
        edge features ``e[l]`` ``(c, N, out_l, in_l)`` of the networks' graphs."""
        n, _, n_in = wb[0][0].shape
        emb = self.node_type.weight  # (3, d)
        h = [
            (self.input_pos.weight[:n_in] + emb[INPUT] + self.layer_emb.weight[0]).expand(n, -1, -1)
        ]
        e = []
        for l, (w, b) in enumerate(wb):
            o, i = w.shape[1:]
            kind = OUTPUT if l == len(wb) - 1 else HIDDEN
            x = emb[kind] + self.layer_emb.weight[l + 1]  # (d,)
            if kind == OUTPUT:
                x = x + self.output_pos.weight[:o]  # (o, d)
            if b is not None:
                x = x + self.bias_in(scalar_features(b, i, -1))  # (N, o, d)
            h.append(x.expand(n, o, -1))
            x = scalar_features(w, i, 0)  # (2, N, o, i)
            x = torch.relu(channel_mix(self.edge_in.weight, x, self.edge_in.bias.view(-1, 1, 1, 1)))
            e.append(channel_mix(self.edge_in2.weight, x, self.edge_in2.bias.view(-1, 1, 1, 1)))
        return torch.cat(h, 1), e

    def forward(self, params: Params) -> Tensor:  # {name: (N, *shape)} -> (N, latent)
        wb = wb_canon = self.canonical(params)
        probed = None if self.probe_in is None else self.probe_activations(wb)
        if self.standardize is not None:
            wb = self.standardize(wb)
        widths = [wb[0][0].shape[2]] + [w.shape[1] for w, _ in wb]
        offsets = [0, *itertools.accumulate(widths)]
        h, e = self.graph(wb)
        if probed is not None:  # values compressed like the weights': sign(a) log(1 + |a|)
            a = torch.cat(probed, 1)  # (N, T, K)
            h = h + self.probe_in(torch.cat([a, torch.sign(a) * torch.log1p(a.abs())], -1))
        for step in self.steps:
            h, e = step(h, e, offsets)
        h = self.norm(h)
        hidden = [h[:, a:b].mean(1) for a, b in zip(offsets[1:-2], offsets[2:-1])]  # (N, d) each
        edges = [el.mean((2, 3)).t() for el in e]  # each layer's edges: (N, c)
        if self.readout == "pooled":  # any depth: first, last, mean
            hidden = _first_last_mean(hidden) if hidden else [h.new_zeros(len(h), 3 * h.shape[-1])]
            edges = _first_last_mean(edges)
        pooled = [*hidden, h[:, offsets[-2] :].flatten(1), h[:, : offsets[1]].mean(1)]  # +out, in
        if self.gram is not None:  # the angles between hidden units, per hidden layer
            angles = self.gram(wb_canon)
            if self.readout == "pooled":
                angles = (
                    _first_last_mean(angles)
                    if angles
                    else [h.new_zeros(len(h), 3 * self.gram.out_dim)]
                )
            pooled += angles
        if self.spectral is not None:  # the shape of every weight matrix's spectrum
            spectra = self.spectral(wb_canon)
            pooled += _first_last_mean(spectra) if self.readout == "pooled" else spectra
        if self.entries is not None:  # how each layer's weights and bias are distributed
            dist = self.entries(wb_canon)
            pooled += _first_last_mean(dist) if self.readout == "pooled" else dist
        return self.head(torch.cat(pooled + edges, -1))


def _first_last_mean(xs: list[Tensor]) -> list[Tensor]:
    """``[xs[0], xs[-1], mean(xs)]``: a fixed width for any number of layers."""
    return [xs[0], xs[-1], torch.stack(xs).mean(0)]
