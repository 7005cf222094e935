"""The field's baseline representations of trained networks, to probe next to a learned latent.

- **Layer statistics** (Unterthiner et al., 2020, "Predicting Neural Network Accuracy from
  Weights"): for every weight and bias tensor its mean, standard deviation, quantiles
  0 / 25 / 50 / 75 / 100 % and L2 norm (Frobenius for a weight matrix): 8 numbers per tensor,
  invariant to hidden-unit permutations. Their paper's strongest predictor is gradient
  boosting on exactly these features.
- **Spectra**: the singular values of every weight matrix, in descending order, also
  invariant to hidden-unit permutations (and to any rotation of a hidden layer). Not one of
  the field's baselines: the autoencoder can read them next to the statistics
  (``model.stats_spectrum``, on a log scale), and the evaluation probes "invariants"
  (:func:`layer_statistics` with ``spectrum=True``) as the honest reference for such a
  latent.
- **Function features** (:func:`function_features_torch`): how the network behaves on a
  fixed set of labelled probe inputs from its task — the size and spread of its outputs,
  its confidence, entropy and margin, its loss and the norm of its loss gradient. All
  invariant to hidden-unit permutations; the output features to every symmetry that keeps
  the function (the gradient norm not to relu's rescaling, which changes the gradient). Not
  a baseline either: the autoencoder reads them with ``model.stats_function``; the gradient
  norm in particular separates a large learning rate from a long training, which weights
  alone confuse.
- **Raw weights**: the flat normalized vector the autoencoder itself reads.
- **PCA** of the flat normalized vectors with as many components as the latent, fitted on
  the training split only: the linear autoencoder of the same width, for probes and for
  reconstruction alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import Tensor

from weightspace.nets.forward import effective_params, forward
from weightspace.nets.spec import MLPSpec

__all__ = [
    "QUANTILES",
    "STATISTICS",
    "fit_pca",
    "function_feature_names",
    "function_features_torch",
    "layer_statistic_names",
    "layer_statistics",
    "layer_statistics_torch",
    "network_features_torch",
    "network_feature_count",
    "product_spectrum_names",
    "product_spectrum_torch",
    "spectrum_names",
    "spectrum_torch",
]

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATISTICS = ("mean", "std", "q0", "q25", "q50", "q75", "q100", "l2")


def layer_statistic_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`layer_statistics`: ``"{tensor}/{statistic}"``, tensor-major."""
    return [f"{name}/{stat}" for name in spec.param_shapes() for stat in STATISTICS]


def layer_statistics(
    params: Mapping[str, Tensor],
    spec: MLPSpec,
    spectrum: bool = False,
    products: bool = False,
    probe: tuple[Tensor, Tensor] | None = None,
) -> np.ndarray:
    """Per-tensor statistics of ``N`` stacked networks: ``(N, 8 * n_tensors)`` float64.

    For each tensor of ``spec.param_shapes()`` (``layers.{l}.weight``, ``layers.{l}.bias``,
    in ``state_dict`` order; weight-normalized parameters are resolved to the effective
    weight first) the columns are :data:`STATISTICS`: mean, population std (ddof 0),
    quantiles with linear interpolation (numpy's default) and the L2 / Frobenius norm.
    Names in :func:`layer_statistic_names`. Pass the networks' own (denormalized) weights.
    ``spectrum``: followed by the log singular values (:func:`network_features_torch`);
    ``products``: then by those of the layer products (:func:`product_spectrum_torch`);
    ``probe``: then by the function features on ``(inputs, labels)``
    (:func:`function_features_torch`, with ``spec``'s activation).
    """
    n = len(next(iter(params.values())))
    # torch.quantile takes at most 2**24 entries at once: rows in chunks below that.
    chunk = max(1, (1 << 22) // max(math.prod(s) for s in spec.param_shapes().values()))
    parts = [
        network_features_torch(
            {k: v[lo : lo + chunk].detach().double().cpu() for k, v in params.items()},
            spec,
            spectrum,
            products,
            None if probe is None else (probe[0].double().cpu(), probe[1].cpu()),
        )
        for lo in range(0, n, chunk)
    ]
    width = network_feature_count(spec, spectrum, products, probe is not None)
    return torch.cat(parts).numpy() if parts else np.zeros((0, width))


def layer_statistics_torch(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """:func:`layer_statistics` in torch, in the parameters' dtype and on their device, and
    differentiable: ``(N, 8 * n_tensors)``. The autoencoder computes them on its batches."""
    eff = effective_params(params, spec)
    q = None
    columns: list[Tensor] = []
    for name in spec.param_shapes():
        x = eff[name].flatten(1)  # (N, n_entries)
        if q is None:
            q = torch.tensor(QUANTILES, dtype=x.dtype, device=x.device)
        columns += [
            x.mean(1, keepdim=True),
            x.std(1, correction=0, keepdim=True),
            torch.quantile(x, q, dim=1).T,  # (N, 5), linear interpolation as numpy
            torch.linalg.vector_norm(x, dim=1, keepdim=True),
        ]
    return torch.cat(columns, 1)


def spectrum_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`spectrum_torch`: ``"{weight}/sv{k}"``, largest first."""
    return [
        f"{name}/sv{k}"
        for name, shape in spec.param_shapes().items()
        if len(shape) == 2
        for k in range(min(shape))
    ]


def spectrum_torch(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """Singular values of every weight matrix of ``N`` stacked networks, each in descending
    order, weight matrices in ``state_dict`` order: ``(N, sum of min(out, in))``, in the
    parameters' dtype and device, differentiable (weight normalization resolved first)."""
    eff = effective_params(params, spec)
    return torch.cat(
        [torch.linalg.svdvals(eff[n]) for n, s in spec.param_shapes().items() if len(s) == 2], 1
    )


def product_spectrum_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`product_spectrum_torch`: ``"W{l}..W0/sv{k}"``."""
    w = spec.widths
    return [f"W{l}..W0/sv{k}" for l in range(1, spec.n_layers) for k in range(min(w[l + 1], w[0]))]


def product_spectrum_torch(params: Mapping[str, Tensor], spec: MLPSpec) -> Tensor:
    """Singular values of the layer products ``W_l ... W_1 W_0`` for l >= 1 (the end-to-end
    linear maps of the network's prefixes, biases and activations left out), each in
    descending order: ``(N, sum of min(width_{l+1}, width_0))``. Permutation-invariant, as a
    product cancels every hidden permutation; how far they are from a product of random
    matrices reflects how far training went (and how fast)."""
    eff = effective_params(params, spec)
    prod, out = eff["layers.0.weight"], []
    for l in range(1, spec.n_layers):
        prod = eff[f"layers.{l}.weight"] @ prod
        out.append(torch.linalg.svdvals(prod))
    return torch.cat(out, 1) if out else prod.new_zeros(len(prod), 0)


def function_feature_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`function_features_torch` (the softmax ones for classifiers,
    i.e. more than one output, only)."""
    softmax = ["f/confidence", "f/log_entropy", "f/log_margin"] if spec.widths[-1] > 1 else []
    return ["f/log_out_rms", "f/log_out_spread", *softmax, "f/log_loss", "f/log_grad_norm"]


def _log(x: Tensor) -> Tensor:
    return x.clamp_min(1e-12).log()


def function_features_torch(
    params: Mapping[str, Tensor],
    spec: MLPSpec,
    x: Tensor,
    y: Tensor,
    activation: str | None = None,
) -> Tensor:
    """How ``N`` stacked networks behave on the probe inputs ``x`` ``(B, in)`` with labels
    ``y`` (class indices ``(B,)``, or regression targets ``(B, out)``): ``(N, F)``, columns
    :func:`function_feature_names`, in the parameters' dtype.

    - ``log_out_rms``: log of the root mean square output; ``log_out_spread``: log of the
      mean over outputs of their standard deviation over the inputs.
    - Classifiers: ``confidence`` (mean top softmax probability), ``log_entropy`` (of the
      mean softmax entropy), ``log_margin`` (of the mean gap between the top two logits).
    - ``log_loss``: the task's loss (cross-entropy or MSE); ``log_grad_norm``: log of the
      norm of its gradient over all the network's weights and biases (weight
      normalization resolved first). SGD stops where its steps balance: the gradient left at
      a checkpoint scales with the learning rate that brought the network there.

    Depends only on the function and the norm of its gradient, so it is invariant to
    hidden-unit permutations (the gradient itself is permuted, its norm is not). Not differentiable
    with respect to ``params``: the gradient is computed on a detached copy, also under
    ``torch.no_grad`` or inference mode.
    """
    classification = not torch.is_floating_point(y)
    with torch.inference_mode(False), torch.enable_grad():
        # Clones made outside inference mode are ordinary tensors autograd can use.
        p = {
            k: v.detach().clone().requires_grad_(True)
            for k, v in effective_params(params, spec).items()
        }
        xx = x.to(next(iter(p.values())).dtype).clone()
        out = forward(p, xx, spec, activation)  # (N, B, C)
        yy = y.clone()
        if classification:
            logp = out.log_softmax(-1)
            loss = -logp.gather(-1, yy.expand(len(out), -1).unsqueeze(-1)).squeeze(-1).mean(1)
        else:
            loss = ((out - yy.to(out.dtype)) ** 2).mean((1, 2))
        grads = torch.autograd.grad(loss.sum(), list(p.values()))
    out, loss = out.detach(), loss.detach()
    grad_norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))
    cols = [_log(out.pow(2).mean((1, 2)).sqrt()), _log(out.std(1, correction=0).mean(-1))]
    if spec.widths[-1] > 1:
        logp = logp.detach() if classification else out.log_softmax(-1)
        prob = logp.exp()
        top2 = out.topk(2, -1).values
        cols += [
            prob.max(-1).values.mean(1),
            _log(-(prob * logp).sum(-1).mean(1)),
            _log((top2[..., 0] - top2[..., 1]).mean(1)),
        ]
    cols += [_log(loss), _log(grad_norm)]
    return torch.stack(cols, 1)


def network_feature_count(
    spec: MLPSpec, spectrum: bool = False, products: bool = False, function: bool = False
) -> int:
    """Width of :func:`network_features_torch`."""
    return (
        8 * len(spec.param_shapes())
        + (len(spectrum_names(spec)) if spectrum else 0)
        + (len(product_spectrum_names(spec)) if products else 0)
        + (len(function_feature_names(spec)) if function else 0)
    )


def network_features_torch(
    params: Mapping[str, Tensor],
    spec: MLPSpec,
    spectrum: bool = False,
    products: bool = False,
    probe: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """:func:`layer_statistics_torch`, followed by the logarithms of :func:`spectrum_torch`
    if ``spectrum`` and of :func:`product_spectrum_torch` if ``products`` (singular values
    below ``1e-6`` count as ``1e-6``), then by :func:`function_features_torch` on ``probe``
    ``(inputs, labels)`` if given (with the spec's activation): the
    permutation-invariant features the autoencoder reads and predicts. On a log scale the
    shape of a spectrum (ratios of singular values, which training changes and the init
    scheme sets) is linear in the features."""
    parts = [layer_statistics_torch(params, spec)]
    if spectrum:
        parts.append(spectrum_torch(params, spec).clamp_min(1e-6).log())
    if products:
        parts.append(product_spectrum_torch(params, spec).clamp_min(1e-6).log())
    if probe is not None:
        parts.append(function_features_torch(params, spec, *probe))
    return torch.cat(parts, 1)


def fit_pca(x_train: np.ndarray, n_components: int, seed: int = 0) -> PCA:
    """PCA of the training vectors ``(N, D)`` with ``n_components`` components (at most
    ``min(N, D)``; the fitted ``n_components_`` says how many). Seeded, so the randomized
    solver scikit-learn picks for large inputs is reproducible."""
    x = np.asarray(x_train, dtype=np.float64)
    k = int(min(n_components, *x.shape))
    if k < 1:
        raise ValueError(f"PCA: need n_components >= 1 and a non-empty (N, D), got {x.shape}")
    # Exact SVD while it is cheap; scikit-learn's choice (randomized for large inputs) beyond.
    solver = "full" if x.size <= 10_000_000 else "auto"
    return PCA(n_components=k, svd_solver=solver, random_state=seed).fit(x)
