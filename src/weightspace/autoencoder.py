"""An autoencoder over the weights of a zoo's MLPs: encoder -> latent -> decoder.

The module works on *normalized flat* weights ``(N, D)`` in ``state_dict`` order (per-tensor
standardization fitted on the training split, :class:`~weightspace.dataset.LayerNormalizer`);
batches of neuron tokens are accepted too and flattened first. Encoder and decoder are
swappable parts chosen by ``kind`` from plain-value options:

- ``mlp``: fully connected layers on the flat vector (hidden sizes, activation, dropout,
  layer norm).
- ``transformer``: one token per neuron (its incoming weights and bias), a token embedding
  (a Linear per layer, or one shared Linear over padded tokens), layer and position
  embeddings, a transformer encoder and a pooled or compression-token latent. The decoder
  has one learned query per neuron that attends to memory tokens made from the latent, and a
  head per layer that writes each neuron's incoming weights and bias.

Losses, each weighted (0 switches it off):

- ``recon``: MSE on normalized weights, averaged over each ``state_dict`` tensor first, so
  a small bias vector counts as much as the large first-layer matrix.
- ``contrastive``: NT-Xent between the latents of two augmented views of each network
  (a datamodule with ``augment`` and ``views=2``), through a small projection head.
- ``functional``: the decoded network, denormalized and run with
  :func:`weightspace.nets.forward.forward` on fixed probe inputs from the zoo's task, must
  reproduce the original's outputs (MSE on outputs, or KL between softmaxes).

Every hyperparameter is a plain value (the normalizer as its dict), and the probe inputs are
a buffer, so ``WeightAutoencoder.load_from_checkpoint(path)`` rebuilds the model alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.baselines import network_feature_count, network_features_torch
from weightspace.dataset import LayerNormalizer, WeightDataModule
from weightspace.errors import ConfigError
from weightspace.nets.forward import forward
from weightspace.nets.layout import (
    flatten_params,
    params_to_tokens,
    tokens_to_params,
    unflatten_params,
)
from weightspace.nets.spec import MLPSpec

Params = dict[str, Tensor]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
FUNCTIONAL_KINDS = ("mse", "kl")
SCHEDULERS = (None, "cosine")


# --------------------------------------------------------------------------- building blocks
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


def _layer_rows(flat: Tensor, spec: MLPSpec) -> list[Tensor]:
    """Per layer, each neuron's incoming weights and bias: ``(N, out_l, in_l + bias)``."""
    params = unflatten_params(flat, spec)
    rows = []
    for l in range(spec.n_layers):
        w = params[f"layers.{l}.weight"]  # (N, out, in)
        rows.append(
            torch.cat([w, params[f"layers.{l}.bias"].unsqueeze(-1)], -1) if spec.bias else w
        )
    return rows


def _rows_to_flat(rows: Sequence[Tensor], spec: MLPSpec) -> Tensor:
    """Inverse of :func:`_layer_rows`: per-layer ``(N, out_l, in_l + bias)`` -> ``(N, D)``."""
    params: Params = {}
    for l, ((_, fan_in), r) in enumerate(zip(spec.layer_shapes(), rows)):
        params[f"layers.{l}.weight"] = r[..., :fan_in]
        if spec.bias:
            params[f"layers.{l}.bias"] = r[..., fan_in]
    return flatten_params(params, spec)


def _transformer_layer(kind: type[nn.Module], d_model: int, n_heads: int, dropout: float):
    # Pre-norm blocks train stably without a warmup, which matters for short zoo runs.
    return kind(
        d_model, n_heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
    )


# --------------------------------------------------------------------------- encoders
# Every encoder maps normalized flat weights (N, D) to latents (N, latent_dim) and is built as
# ``cls(spec, latent_dim, **options)`` — or, if its class sets ``reads_outputs``, maps the
# network's outputs on the model's probe inputs (N, n_probe, out) and also gets ``n_probe``.
# An equivariant encoder over each layer's weight tensor (neural functionals, then invariant
# pooling) follows the same interface: add its class to ENCODERS and a conf/encoder/<kind>.yaml.
class MLPEncoder(nn.Module):
    """Fully connected encoder on the flat weight vector."""

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        hidden: Sequence[int] = (512, 256),
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.net = mlp_layers(
            [spec.n_params(), *hidden, latent_dim], activation, dropout, layer_norm
        )

    def forward(self, flat: Tensor) -> Tensor:
        return self.net(flat)  # (N, D) -> (N, latent)


class ProbeEncoder(nn.Module):
    """Permutation-invariant by construction: an MLP on what the network computes on the
    model's probe inputs, not on its weights. Every weight-space symmetry that keeps the
    function (hidden-unit permutations, relu's rescaling) leaves the latent unchanged, and no
    alignment is needed; what the probe inputs do not exercise, it cannot see.

    Classifiers' outputs enter as log-probabilities, clamped at -30 and in units of 10 nats
    (a softmax shift changes nothing; confidence stays visible); regression outputs as they
    are."""

    reads_outputs = True

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        n_probe: int = 256,
        hidden: Sequence[int] = (512, 256),
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.classes = spec.widths[-1] > 1
        self.net = mlp_layers(
            [n_probe * spec.widths[-1], *hidden, latent_dim], activation, dropout, layer_norm
        )

    def forward(self, outputs: Tensor) -> Tensor:  # (N, n_probe, out) -> (N, latent)
        if self.classes:
            outputs = outputs.log_softmax(-1).clamp_min(-30.0) / 10.0
        return self.net(outputs.flatten(1))


class TransformerEncoder(nn.Module):
    """Transformer over neuron tokens (incoming weights + bias), pooled into the latent.

    ``token_embedding="per_layer"``: a Linear per layer on that layer's real entries;
    ``"shared"``: one Linear over the padded tokens (``d_tok = max fan-in + bias``), the
    layer told apart by the layer embedding only. ``pooling="mean"`` averages the neuron
    tokens; ``"tokens"`` prepends ``n_latent_tokens`` learned compression tokens and reads the
    latent from their outputs. Position embeddings mark a neuron's row in its layer; without
    them (``position_embedding=False``) and with mean pooling the encoder is invariant to
    reordering the tokens of a layer (not yet to the full symmetry, whose permutation also
    acts on the next layer's incoming weights).
    """

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.0,
        token_embedding: str = "per_layer",
        position_embedding: bool = True,
        pooling: str = "mean",
        n_latent_tokens: int = 4,
    ):
        super().__init__()
        if token_embedding not in ("per_layer", "shared"):
            raise ConfigError(f"token_embedding: '{token_embedding}' (choose per_layer or shared)")
        if pooling not in ("mean", "tokens"):
            raise ConfigError(f"pooling: '{pooling}' (choose mean or tokens)")
        self.spec = spec
        fan_ins = [i + int(spec.bias) for _, i in spec.layer_shapes()]
        if token_embedding == "per_layer":
            self.embed = nn.ModuleList(nn.Linear(f, d_model) for f in fan_ins)
        else:
            self.embed = nn.ModuleList([nn.Linear(max(fan_ins), d_model)])
        outs = [o for o, _ in spec.layer_shapes()]
        layer_id = torch.cat([torch.full((o,), l) for l, o in enumerate(outs)])  # (T,)
        position_id = torch.cat([torch.arange(o) for o in outs])  # (T,)
        self.register_buffer("layer_id", layer_id, persistent=False)
        self.register_buffer("position_id", position_id, persistent=False)
        self.layer_emb = nn.Embedding(spec.n_layers, d_model)
        self.pos_emb = nn.Embedding(max(outs), d_model) if position_embedding else None
        n_lat = n_latent_tokens if pooling == "tokens" else 0
        self.latent_tokens = nn.Parameter(torch.randn(n_lat, d_model) * 0.02) if n_lat else None
        self.blocks = nn.TransformerEncoder(
            _transformer_layer(nn.TransformerEncoderLayer, d_model, n_heads, dropout),
            n_layers,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,  # with norm_first it would only warn
        )
        self.head = nn.Linear(max(n_lat, 1) * d_model, latent_dim)

    def tokens(self, flat: Tensor) -> Tensor:
        """Embedded neuron tokens ``(N, T, d_model)``."""
        if len(self.embed) == 1:  # shared: padded tokens as the datamodule makes them
            h = self.embed[0](params_to_tokens(unflatten_params(flat, self.spec), self.spec))
        else:
            rows = _layer_rows(flat, self.spec)  # per layer (N, out_l, in_l + bias)
            h = torch.cat([emb(r) for emb, r in zip(self.embed, rows)], 1)  # (N, T, d)
        h = h + self.layer_emb(self.layer_id)
        if self.pos_emb is not None:
            h = h + self.pos_emb(self.position_id)
        return h

    def forward(self, flat: Tensor) -> Tensor:
        h = self.tokens(flat)  # (N, T, d)
        if self.latent_tokens is None:
            return self.head(self.blocks(h).mean(1))  # (N, latent)
        k = self.latent_tokens.shape[0]
        h = torch.cat([self.latent_tokens.expand(len(h), -1, -1), h], 1)  # (N, K + T, d)
        return self.head(self.blocks(h)[:, :k].flatten(1))  # (N, K * d) -> (N, latent)


# --------------------------------------------------------------------------- decoders
# Every decoder maps latents (N, latent_dim) to normalized flat weights (N, D), built as
# ``cls(spec, latent_dim, **options)``.
class MLPDecoder(nn.Module):
    """Fully connected decoder to the flat weight vector."""

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        hidden: Sequence[int] = (256, 512),
        activation: str = "gelu",
        dropout: float = 0.0,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.net = mlp_layers(
            [latent_dim, *hidden, spec.n_params()], activation, dropout, layer_norm
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (N, latent) -> (N, D)


class TransformerDecoder(nn.Module):
    """One learned query per neuron attends to memory tokens made from the latent; a head per
    layer turns each query's output into that neuron's incoming weights and bias."""

    def __init__(
        self,
        spec: MLPSpec,
        latent_dim: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.0,
        n_memory_tokens: int = 4,
    ):
        super().__init__()
        self.spec = spec
        self.d_model = d_model
        self.n_memory = n_memory_tokens
        self.memory = nn.Linear(latent_dim, n_memory_tokens * d_model)
        n_tokens = sum(spec.widths[1:])
        self.queries = nn.Parameter(torch.randn(n_tokens, d_model) * 0.02)  # (T, d)
        self.blocks = nn.TransformerDecoder(
            _transformer_layer(nn.TransformerDecoderLayer, d_model, n_heads, dropout),
            n_layers,
            norm=nn.LayerNorm(d_model),
        )
        self.heads = nn.ModuleList(
            nn.Linear(d_model, i + int(spec.bias)) for _, i in spec.layer_shapes()
        )

    def forward(self, z: Tensor) -> Tensor:
        n = len(z)
        memory = self.memory(z).view(n, self.n_memory, self.d_model)  # (N, K, d)
        h = self.blocks(self.queries.expand(n, -1, -1), memory)  # (N, T, d)
        rows, start = [], 0
        for head, (out, _) in zip(self.heads, self.spec.layer_shapes()):
            rows.append(head(h[:, start : start + out]))  # (N, out_l, in_l + bias)
            start += out
        return _rows_to_flat(rows, self.spec)  # (N, D)


STATS_INPUTS = (False, True, "add", "concat")
ENCODERS: dict[str, type[nn.Module]] = {
    "mlp": MLPEncoder,
    "transformer": TransformerEncoder,
    "probe": ProbeEncoder,
}
DECODERS: dict[str, type[nn.Module]] = {"mlp": MLPDecoder, "transformer": TransformerDecoder}


def build_part(
    registry: Mapping[str, type[nn.Module]],
    what: str,
    options: Mapping[str, Any],
    spec: MLPSpec,
    latent_dim: int,
) -> nn.Module:
    """``options["kind"]`` picks the class; the other options are its keyword arguments."""
    opts = dict(options)
    kind = opts.pop("kind", None)
    if kind not in registry:
        raise ConfigError(f"{what}.kind: '{kind}' (choose from {', '.join(registry)})")
    try:
        return registry[kind](spec, latent_dim, **opts)
    except TypeError as e:  # an option the part does not take
        raise ConfigError(f"{what}: {e}") from e


# --------------------------------------------------------------------------- losses
def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR): ``a[i]`` and ``b[i]`` are positives, the other 2N - 2 negatives."""
    z = F.normalize(torch.cat([a, b]), dim=-1)  # (2N, P)
    sim = z @ z.T / temperature  # (2N, 2N)
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def probe_inputs(x: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` rows of ``x`` drawn without replacement (all of them if there are fewer); the
    same ``seed`` draws the same rows of an equally long ``y`` (their labels)."""
    gen = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=gen)[:n]].clone()


# --------------------------------------------------------------------------- the module
class WeightAutoencoder(pl.LightningModule):
    """Autoencoder over flat, normalized MLP weights.

    Args:
        widths: the zoo's layer widths, input and output included.
        activations: activation names in the datamodule's category order: a batch's
            ``targets["activation"]`` codes index into it (zoos may mix activations).
        bias: whether the zoo's layers have biases.
        normalizer: :meth:`LayerNormalizer.to_dict` of the training split; ``None`` when the
            weights are not normalized.
        encoder, decoder: ``{"kind": "mlp" | "transformer", **options}``.
        latent_dim: size of the latent.
        recon_weight, contrastive_weight, functional_weight: loss weights; 0 turns a loss off.
        temperature: NT-Xent temperature.
        projection_dim: output size of the contrastive projection head.
        functional_kind: ``"mse"`` on outputs or ``"kl"`` between softmaxes (classification).
        stats_weight: weight of the statistics loss: a linear head on the latent must
            predict the network's per-layer weight statistics
            (:func:`~weightspace.baselines.layer_statistics`, standardized), so the latent
            carries the permutation-invariant summary that predicts a network's properties
            (Unterthiner et al. 2020) along with what reconstruction needs. 0 turns it off.
        stats_input: how the model reads those statistics (sorting-based features an MLP or
            attention cannot easily compute): ``False`` not at all; ``True`` / ``"add"`` a
            linear map of them is added to the encoder's latent; ``"concat"`` they become
            ``8 * n_tensors`` more coordinates of the latent, after the encoder's
            ``latent_dim`` (so the latent is ``latent_dim + 8 * n_tensors`` wide, the decoder
            reads both, and the encoder is free to learn what the statistics miss).
        stats_spectrum: the statistics also hold the singular values of every weight matrix
            (:func:`~weightspace.baselines.spectrum_torch`): the init scheme shows in a
            spectrum (an orthogonal matrix's is flat) more than in any quantile.
        stats_products: ... and the singular values of the layer products W_l..W_0
            (:func:`~weightspace.baselines.product_spectrum_torch`), which read how far
            training moved the end-to-end maps from a product of random matrices.
        stats_function: ... and the function features on the probe inputs with their labels
            (:func:`~weightspace.baselines.function_features_torch`: output scale and
            spread, confidence, entropy, margin, loss, gradient norm), which read how the
            network behaves where weights alone confuse a large learning rate with a long
            training.
        stats_mean, stats_std: the statistics' training-split mean and std (plain lists;
            :meth:`from_datamodule` fills them when either option is on).
        n_probe: number of probe inputs (a buffer, filled from ``probe_inputs``).
        lr, weight_decay: AdamW; no decay on biases and norm gains.
        scheduler: ``None`` or ``"cosine"`` (per step, to 0 at the end of training).
        warmup_steps: linear warmup before the cosine decay.
        probe_inputs: ``(n_probe, widths[0])`` task inputs; not a hyperparameter (they travel in
            the state dict). Left out when loading a checkpoint.
        probe_targets: their labels (class indices ``(n_probe,)``, or regression targets
            ``(n_probe, out)``), needed with ``stats_function`` only; like ``probe_inputs``.
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
        projection_dim: int = 32,
        functional_kind: str = "mse",
        stats_weight: float = 0.0,
        stats_input: bool | str = False,
        stats_spectrum: bool = False,
        stats_products: bool = False,
        stats_function: bool = False,
        stats_mean: Sequence[float] | None = None,
        stats_std: Sequence[float] | None = None,
        n_probe: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        scheduler: str | None = "cosine",
        warmup_steps: int = 0,
        probe_inputs: Tensor | None = None,
        probe_targets: Tensor | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["probe_inputs", "probe_targets"])
        if functional_kind not in FUNCTIONAL_KINDS:
            raise ConfigError(f"functional_kind: '{functional_kind}' (choose mse or kl)")
        if functional_kind == "kl" and widths[-1] < 2:
            raise ConfigError("functional_kind: kl needs class outputs; use mse for regression")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: '{scheduler}' (choose null or cosine)")
        if min(recon_weight, contrastive_weight, functional_weight, stats_weight) < 0 or not any(
            (recon_weight, contrastive_weight, functional_weight)
        ):
            raise ConfigError(
                "recon_weight, contrastive_weight, functional_weight, stats_weight: must be >= 0, "
                "one of the first three > 0"
            )
        if stats_input not in STATS_INPUTS:
            raise ConfigError(f"stats_input: '{stats_input}' (choose false, add or concat)")
        spec = MLPSpec(tuple(widths), activations[0], bias)
        n_stats = network_feature_count(spec, stats_spectrum, stats_products, stats_function)
        concat = stats_input == "concat"
        if concat and stats_weight > 0:
            raise ConfigError(
                "stats_weight: must be 0 with stats_input=concat (the statistics are latent "
                "coordinates already)"
            )
        #: width of the latent: the encoder's, plus the statistics with stats_input=concat.
        self.latent_width = latent_dim + (n_stats if concat else 0)
        self.spec = MLPSpec(tuple(widths), activations[0], bias)
        self.activations = list(activations)
        self.normalizer = None if normalizer is None else LayerNormalizer.from_dict(normalizer)
        encoder = dict(encoder or {"kind": "mlp"})
        self.reads_outputs = getattr(ENCODERS.get(encoder.get("kind")), "reads_outputs", False)
        if self.reads_outputs:
            if len(self.activations) > 1:
                raise ConfigError(
                    f"encoder.kind: {encoder['kind']} needs a zoo of one activation, this one "
                    f"mixes {', '.join(self.activations)}"
                )
            encoder["n_probe"] = n_probe
        self.encoder = build_part(ENCODERS, "encoder", encoder, self.spec, latent_dim)
        self.decoder = build_part(
            DECODERS, "decoder", decoder or {"kind": "mlp"}, self.spec, self.latent_width
        )
        uses_stats = stats_weight > 0 or stats_input
        if uses_stats and (stats_mean is None or stats_std is None):
            raise ConfigError("stats_weight / stats_input: need stats_mean and stats_std")
        if uses_stats and not (len(stats_mean) == len(stats_std) == n_stats):
            raise ConfigError(f"stats_mean, stats_std: need {n_stats} values each")
        self.stats_head = nn.Linear(latent_dim, n_stats) if stats_weight > 0 else None
        self.stats_in = nn.Linear(n_stats, latent_dim) if stats_input in (True, "add") else None
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

        # Per-entry normalizer statistics, derived from the hyperparameters: not saved.
        d = self.spec.n_params()
        zeros, ones = torch.zeros(d), torch.ones(d)
        mean = zeros if self.normalizer is None else self.normalizer.denormalize_flat(zeros)
        std = ones if self.normalizer is None else self.normalizer.denormalize_flat(ones) - mean
        self.register_buffer("weight_mean", mean, persistent=False)  # (D,)
        self.register_buffer("weight_std", std, persistent=False)  # (D,)
        self.tensor_sizes = [math.prod(s) for s in self.spec.param_shapes().values()]

        shape = (n_probe, self.spec.widths[0])
        if probe_inputs is not None and tuple(probe_inputs.shape) != shape:
            raise ConfigError(f"probe_inputs: shape {tuple(probe_inputs.shape)}, expected {shape}")
        self.register_buffer(
            "probe_inputs", torch.zeros(shape) if probe_inputs is None else probe_inputs.float()
        )
        if stats_function and len(self.activations) > 1:
            raise ConfigError(
                f"stats_function: needs a zoo of one activation, this one mixes "
                f"{', '.join(self.activations)}"
            )
        if stats_function:  # (a buffer only then: earlier checkpoints reload strictly)
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
        of its task (drawn with ``probe_seed``) as probe inputs; with ``stats_weight`` or
        ``stats_input``, the statistics' mean and std over (up to 4,096 checkpoints of) the
        training split."""
        datamodule.setup()
        spec = datamodule.spec
        task = datamodule.full_dataset.zoos[0].task()  # zoos of one datamodule share widths
        probe = probe_inputs(task.x_train, n_probe, probe_seed)
        labels = probe_inputs(task.y_train, n_probe, probe_seed)
        if hparams.get("stats_weight", 0) > 0 or hparams.get("stats_input", False):
            train = datamodule.dataset("train")
            gen = torch.Generator().manual_seed(probe_seed)
            idx = torch.randperm(len(train), generator=gen)[:4096].sort().values
            stats = cls._features(
                {k: v.double() for k, v in train.params(idx.numpy()).items()},
                spec,
                hparams,
                (probe.double(), labels),
            )
            hparams.setdefault("stats_mean", stats.mean(0).tolist())
            hparams.setdefault("stats_std", stats.std(0).clamp_min(1e-8).tolist())
        return cls(
            widths=list(spec.widths),
            activations=datamodule.categories.get("activation", [spec.activation]),
            bias=spec.bias,
            normalizer=None if datamodule.normalizer is None else datamodule.normalizer.to_dict(),
            n_probe=len(probe),
            probe_inputs=probe,
            probe_targets=labels if hparams.get("stats_function", False) else None,
            **hparams,
        )

    # ---- the public API
    def flat_weights(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Normalized flat weights ``(B, [V,] D)`` of a datamodule batch (flat or tokens)."""
        if "weights" in batch:
            return batch["weights"]
        return flatten_params(tokens_to_params(batch["tokens"], self.spec), self.spec)

    def encode(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Latents ``(..., latent)`` of a batch, or of normalized flat weights ``(..., D)``."""
        x = batch_or_weights
        if isinstance(x, Mapping):
            x = self.flat_weights(x)
        return self._encode_flat(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    @staticmethod
    def _features(
        params: Params,
        spec: MLPSpec,
        hparams: Mapping[str, Any],
        probe: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """The invariant features the hyperparameters ask for, unstandardized; ``probe``
        (inputs, labels) is used with ``stats_function`` only."""
        return network_features_torch(
            params,
            spec,
            bool(hparams.get("stats_spectrum", False)),
            bool(hparams.get("stats_products", False)),
            probe if hparams.get("stats_function", False) else None,
        )

    def weight_statistics(self, flat: Tensor) -> Tensor:
        """Standardized invariant features ``(N, S)`` of networks given as normalized flat
        weights ``(N, D)``: per-layer statistics, then the spectra, product spectra and
        function features the ``stats_*`` options ask for."""
        # In float64: a bias's mean is a small difference of large sums, and standardizing
        # by a small spread across the zoo would magnify float32 rounding.
        params = unflatten_params(self.denormalize(flat).double(), self.spec)
        probe = None
        if self.hparams.get("stats_function", False):
            probe = (self.probe_inputs.double(), self.probe_targets)
        stats = self._features(params, self.spec, self.hparams, probe)
        return ((stats - self.stats_mean.double()) / self.stats_std.double()).to(flat.dtype)

    def _encode_flat(self, flat: Tensor, stats: Tensor | None = None) -> Tensor:
        z = self.encoder(self.network_outputs(flat) if self.reads_outputs else flat)
        if self.stats_in is None and not self.stats_concat:
            return z
        stats = self.weight_statistics(flat) if stats is None else stats
        if self.stats_concat:
            return torch.cat([z, stats], -1)
        return z + self.stats_in(stats)

    def decode(self, latent: Tensor) -> Tensor:
        """Normalized flat weights ``(..., D)`` from latents ``(..., latent)``."""
        return self.decoder(latent.reshape(-1, latent.shape[-1])).reshape(*latent.shape[:-1], -1)

    def denormalize(self, flat: Tensor) -> Tensor:
        """Normalized flat weights -> weights as the zoo stores them, same shape."""
        return flat * self.weight_std + self.weight_mean

    def decode_params(self, latent: Tensor) -> Params:
        """Denormalized parameters ``{name: (..., *shape)}`` ready for ``mlp.forward``."""
        return unflatten_params(self.denormalize(self.decode(latent)), self.spec)

    def forward(self, batch_or_weights: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Reconstruction: normalized flat weights, same leading shape as the input."""
        return self.decode(self.encode(batch_or_weights))

    # ---- losses
    def recon_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """MSE per ``state_dict`` tensor, then the mean over tensors."""
        per_tensor = [
            F.mse_loss(p, t)
            for p, t in zip(pred.split(self.tensor_sizes, -1), target.split(self.tensor_sizes, -1))
        ]
        return torch.stack(per_tensor).mean()

    def network_outputs(self, flat: Tensor, activation: Tensor | None = None) -> Tensor:
        """Outputs ``(N, n_probe, out)`` on the probe inputs of networks given as normalized
        flat weights ``(N, D)``; ``activation``: ``(N,)`` codes into :attr:`activations`."""
        params = unflatten_params(self.denormalize(flat), self.spec)
        if activation is None or len(self.activations) == 1:
            return forward(params, self.probe_inputs, self.spec)
        out = flat.new_empty(len(flat), len(self.probe_inputs), self.spec.widths[-1])
        for code in activation.unique().tolist():
            sel = activation == code
            out[sel] = forward(
                {n: p[sel] for n, p in params.items()},
                self.probe_inputs,
                self.spec,
                self.activations[code],
            )
        return out

    def functional_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Decoded outputs ``pred`` vs the original's ``target``, both ``(N, n_probe, out)``."""
        if self.hparams.functional_kind == "mse":
            return F.mse_loss(pred, target)
        return F.kl_div(
            F.log_softmax(pred, -1).flatten(0, 1),
            F.log_softmax(target, -1).flatten(0, 1),
            reduction="batchmean",
            log_target=True,
        )

    def compute_losses(
        self, batch: Mapping[str, Any], functional: bool | None = None
    ) -> dict[str, Tensor]:
        """Every loss term that applies to ``batch`` and the weighted total ``"loss"``.

        ``functional`` forces the functional term (and, for classifiers, ``agreement``: the
        fraction of probe inputs on which the decoded network predicts the original's class)
        on or off; by default it is computed when its weight is > 0.
        """
        hp = self.hparams
        x = self.flat_weights(batch)
        x = x if x.dim() == 3 else x.unsqueeze(1)  # (B, V, D)
        b, v, d = x.shape
        flat = x.reshape(b * v, d)
        stats = None
        if self.stats_in is not None or self.stats_head is not None or self.stats_concat:
            with torch.no_grad():
                stats = self.weight_statistics(flat)  # (B*V, S), an input and a target
        z = self._encode_flat(flat, stats)  # (B*V, latent)
        recon = self.decoder(z)  # (B*V, D)

        terms = {"recon": self.recon_loss(recon, flat)}
        if self.stats_head is not None:
            terms["stats"] = F.mse_loss(self.stats_head(z), stats)
        if v >= 2 and self.projection is not None:
            p = self.projection(z).view(b, v, -1)
            terms["contrastive"] = nt_xent(p[:, 0], p[:, 1], hp.temperature)
        elif hp.contrastive_weight > 0:
            raise ConfigError(
                "contrastive_weight > 0 needs two augmented views per network "
                "(canon=augment, or data.augment=weightspace.symmetry.augment data.views=2)"
            )
        if functional is None:
            functional = hp.functional_weight > 0
        if functional:
            act = batch.get("targets", {}).get("activation")
            act = None if act is None else act.repeat_interleave(v)
            with torch.no_grad():
                target = self.network_outputs(flat, act)
            pred = self.network_outputs(recon, act)
            terms["functional"] = self.functional_loss(pred, target)
            if self.spec.widths[-1] > 1:
                terms["agreement"] = (pred.argmax(-1) == target.argmax(-1)).float().mean()

        weights = {
            "recon": hp.recon_weight,
            "contrastive": hp.contrastive_weight,
            "functional": hp.functional_weight,
            "stats": hp.stats_weight,
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

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # Biases and norm gains (1-d) are not decayed: pulling them to 0 only hurts.
        decay = [p for p in self.parameters() if p.dim() >= 2 and p.requires_grad]
        rest = [p for p in self.parameters() if p.dim() < 2 and p.requires_grad]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=hp.lr,
        )
        if hp.scheduler is None:
            return opt
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError(
                "scheduler=cosine: needs a finite trainer.max_epochs or trainer.max_steps"
            )
        warmup = int(hp.warmup_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
