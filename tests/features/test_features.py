"""The hand-made invariant features: per-layer statistics, spectra, function features, PCA.

(Moved from tests/evaluation/test_evaluation.py, section "baselines", with weightspace.features.)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from weightspace.features import FeatureSpec
from weightspace.features.function import function_feature_names, function_features_torch
from weightspace.features.pca import fit_pca
from weightspace.features.spectra import (
    product_spectrum_names,
    product_spectrum_torch,
    spectrum_names,
    spectrum_torch,
)
from weightspace.features.statistics import (
    layer_shape_names,
    layer_shape_torch,
    layer_statistic_names,
    layer_statistics,
)
from weightspace.nets.forward import MLP, member_params
from weightspace.nets.spec import MLPSpec
from weightspace.symmetry import apply_permutation, mlp_permutation_spec, random_permutations


def test_layer_statistics_of_known_tensors():
    spec = MLPSpec((3, 4, 2))
    one = {
        "layers.0.weight": torch.arange(12.0).reshape(4, 3),
        "layers.0.bias": torch.tensor([1.0, 1.0, 1.0, 1.0]),
        "layers.1.weight": torch.zeros(2, 4),
        "layers.1.bias": torch.tensor([-3.0, 4.0]),
    }
    params = {k: torch.stack([v, -v]) for k, v in one.items()}
    feats = layer_statistics(params, spec)
    names = layer_statistic_names(spec)
    assert feats.shape == (2, 8 * 4) == (2, len(names))
    f = dict(zip(names, feats[0]))
    assert f["layers.0.weight/mean"] == 5.5
    assert math.isclose(f["layers.0.weight/std"], np.arange(12).std())
    quantiles = [f[f"layers.0.weight/q{q}"] for q in (0, 25, 50, 75, 100)]
    assert quantiles == [0.0, 2.75, 5.5, 8.25, 11.0]
    assert math.isclose(f["layers.0.weight/l2"], math.sqrt(sum(i * i for i in range(12))))
    assert f["layers.0.bias/std"] == 0.0 and f["layers.0.bias/l2"] == 2.0
    assert f["layers.1.weight/l2"] == 0.0 and f["layers.1.bias/l2"] == 5.0
    assert f["layers.1.bias/q50"] == 0.5
    g = dict(zip(names, feats[1]))  # the negated network
    assert g["layers.0.weight/mean"] == -5.5 and g["layers.0.weight/q0"] == -11.0
    assert g["layers.0.weight/l2"] == f["layers.0.weight/l2"]


def test_shape_statistics_are_each_weights_statistics_over_its_rms_and_ignore_scale():
    spec, gen, params = _random_networks(3)
    shape = layer_shape_torch(params, spec).double().numpy()
    stats = dict(zip(layer_statistic_names(spec), layer_statistics(params, spec).T))
    names = layer_shape_names(spec)
    assert shape.shape == (4, 7 * 3) == (4, len(names))  # weights only, three layers
    assert all(
        n.startswith(("layers.0.weight/", "layers.1.weight/", "layers.2.weight/")) for n in names
    )
    f = dict(zip(names, shape.T))
    t = "layers.1.weight"
    rms = stats[f"{t}/l2"] / math.sqrt(7 * 6)
    np.testing.assert_allclose(f[f"{t}/log_rms"], np.log(rms), rtol=1e-5)
    for q in ("mean", "q0", "q25", "q50", "q75", "q100"):
        np.testing.assert_allclose(f[f"{t}/{q}/rms"], stats[f"{t}/{q}"] / rms, rtol=1e-5)
    # a matrix scaled by 3: only its log RMS moves, by log 3
    scaled = layer_shape_torch(dict(params, **{t: 3 * params[t]}), spec).double().numpy()
    moved = np.abs(scaled - shape).max(0) > 1e-5
    assert [n for n, m in zip(names, moved) if m] == [f"{t}/log_rms"]
    shift = dict(zip(names, scaled.T))[f"{t}/log_rms"] - f[f"{t}/log_rms"]
    np.testing.assert_allclose(shift, math.log(3), rtol=1e-5)
    # zero biases (a zoo's init) change nothing; a zero matrix gives finite numbers
    zeros = {k: torch.zeros_like(v) if k.endswith("bias") else v for k, v in params.items()}
    np.testing.assert_array_equal(layer_shape_torch(zeros, spec).double().numpy(), shape)
    dead = layer_shape_torch(dict(params, **{t: torch.zeros_like(params[t])}), spec)
    assert torch.isfinite(dead).all()
    # in a FeatureSpec: after the statistics, before the spectra; off by default
    fs = FeatureSpec(spectrum=True, shape=True)
    assert fs.names(spec)[48:69] == names and fs.width(spec) == 48 + 21 + len(spectrum_names(spec))
    np.testing.assert_allclose(fs.compute(params, spec)[:, 48:69], shape, rtol=1e-5, atol=1e-6)
    assert "shape" not in FeatureSpec().to_dict() and FeatureSpec(shape=True).to_dict()["shape"]


def _random_networks(seed: int):
    """Four random [5, 7, 6, 3] networks, and the generator that drew them."""
    spec = MLPSpec((5, 7, 6, 3))
    gen = torch.Generator().manual_seed(seed)
    return spec, gen, {k: torch.randn(4, *s, generator=gen) for k, s in spec.param_shapes().items()}


def test_layer_statistics_ignore_hidden_unit_order():
    spec, gen, params = _random_networks(0)
    ps = mlp_permutation_spec(spec)
    permuted = apply_permutation(ps, random_permutations(ps, 4, gen), params)
    np.testing.assert_allclose(
        layer_statistics(permuted, spec), layer_statistics(params, spec), rtol=1e-6, atol=1e-6
    )


def test_spectra_are_singular_values_largest_first_and_ignore_hidden_unit_order():
    spec, gen, params = _random_networks(1)
    sv = spectrum_torch(params, spec)
    names = spectrum_names(spec)
    assert sv.shape == (4, 5 + 6 + 3) == (4, len(names)) and names[5] == "layers.1.weight/sv0"
    np.testing.assert_allclose(
        sv[2, 5:11].numpy(), np.linalg.svd(params["layers.1.weight"][2].numpy())[1], rtol=1e-5
    )
    assert (sv[:, :5].diff(dim=1) <= 0).all()  # descending within a matrix
    ps = mlp_permutation_spec(spec)
    permuted = apply_permutation(ps, random_permutations(ps, 4, gen), params)
    torch.testing.assert_close(spectrum_torch(permuted, spec), sv)
    # An orthogonal matrix's spectrum is flat: what tells an orthogonal init apart.
    q = torch.linalg.qr(torch.randn(7, 7, generator=gen))[0][:, :5]
    flat = spectrum_torch({**params, "layers.0.weight": q.expand(4, 7, 5)}, spec)[:, :5]
    torch.testing.assert_close(flat, torch.ones(4, 5))
    stats_only = FeatureSpec().compute_torch(params, spec)
    both = FeatureSpec(spectrum=True).compute_torch(params, spec)
    torch.testing.assert_close(both, torch.cat([stats_only, sv.log()], 1))
    np.testing.assert_allclose(
        FeatureSpec(spectrum=True).compute(params, spec), both.double().numpy(), rtol=1e-5
    )


def test_product_spectra_are_those_of_the_end_to_end_maps_and_invariant():
    spec, gen, params = _random_networks(2)
    sv = product_spectrum_torch(params, spec)
    names = product_spectrum_names(spec)
    assert sv.shape == (4, 5 + 3) == (4, len(names)) and names[5] == "W2..W0/sv0"
    w = [params[f"layers.{l}.weight"][1].double().numpy() for l in range(3)]
    np.testing.assert_allclose(sv[1, :5].numpy(), np.linalg.svd(w[1] @ w[0])[1], rtol=1e-4)
    np.testing.assert_allclose(sv[1, 5:].numpy(), np.linalg.svd(w[2] @ w[1] @ w[0])[1], rtol=1e-4)
    ps = mlp_permutation_spec(spec)
    permuted = apply_permutation(ps, random_permutations(ps, 4, gen), params)
    torch.testing.assert_close(product_spectrum_torch(permuted, spec), sv)
    # hidden-unit scaling (relu's symmetry) moves no product either
    scaled = dict(params)
    c = torch.rand(4, 7, generator=gen) + 0.5
    scaled["layers.0.weight"] = params["layers.0.weight"] * c[:, :, None]
    scaled["layers.1.weight"] = params["layers.1.weight"] / c[:, None, :]
    torch.testing.assert_close(product_spectrum_torch(scaled, spec), sv, rtol=1e-4, atol=1e-5)
    every = FeatureSpec(spectrum=True, products=True).compute_torch(params, spec)
    assert every.shape[1] == FeatureSpec(True, True).width(spec) == 8 * 6 + 14 + 8
    torch.testing.assert_close(every[:, -8:], sv.log())
    np.testing.assert_allclose(
        FeatureSpec(spectrum=True, products=True).compute(params, spec),
        every.numpy(),
        rtol=1e-5,
        atol=1e-5,  # (float64 against float32)
    )


def test_function_features_are_one_networks_loss_gradient_and_outputs():
    spec, gen, params = _random_networks(3)
    x, y = torch.randn(9, 5, generator=gen), torch.randint(0, 3, (9,), generator=gen)
    f = function_features_torch(params, spec, x, y)
    names = function_feature_names(spec)
    assert f.shape == (4, len(names)) and not any(p.requires_grad for p in params.values())
    col = dict(zip(names, f[2]))
    net = MLP(spec)  # member 2 as a plain module, its loss and gradient by autograd
    net.load_state_dict(member_params(params, 2))
    out = net(x)
    loss = torch.nn.functional.cross_entropy(out, y)
    grad_norm = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])
    out, prob = out.detach(), out.detach().softmax(-1)
    expected = {
        "f/log_out_rms": out.pow(2).mean().sqrt().log(),
        "f/log_out_spread": out.std(0, correction=0).mean().log(),
        "f/confidence": prob.max(-1).values.mean(),
        "f/log_entropy": (-(prob * prob.log()).sum(-1)).mean().log(),
        "f/log_margin": out.topk(2, -1).values.diff(dim=-1).neg().mean().log(),
        "f/log_loss": loss.detach().log(),
        "f/log_grad_norm": grad_norm.norm().log(),
    }
    for name, value in expected.items():
        torch.testing.assert_close(col[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # The same under no_grad and inference mode (the evaluation's and Lightning's contexts).
    with torch.inference_mode():
        torch.testing.assert_close(function_features_torch(params, spec, x, y), f)
    # Functions of the network's function and of the gradient's norm: hidden-unit order
    # moves nothing.
    ps = mlp_permutation_spec(spec)
    permuted = apply_permutation(ps, random_permutations(ps, 4, gen), params)
    torch.testing.assert_close(function_features_torch(permuted, spec, x, y), f)
    # Regression targets: no softmax columns, mean squared error as the loss.
    reg = MLPSpec((5, 7, 6, 1))
    reg_params = {k: torch.randn(4, *s, generator=gen) for k, s in reg.param_shapes().items()}
    target = torch.randn(9, 1, generator=gen)
    g = function_features_torch(reg_params, reg, x, target)
    assert g.shape == (4, 4) == (4, len(function_feature_names(reg)))
    reg_out = MLP(reg)
    reg_out.load_state_dict(member_params(reg_params, 0))
    mse = (reg_out(x) - target).pow(2).mean()
    torch.testing.assert_close(g[0, 2], mse.detach().log(), rtol=1e-5, atol=1e-6)
    every = FeatureSpec(function=True).compute_torch(params, spec, (x, y))
    assert every.shape[1] == FeatureSpec(function=True).width(spec) == 8 * 6 + 7
    torch.testing.assert_close(every[:, -7:], f)


def test_pca_baseline_clamps_components_and_reconstructs_its_span():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 3)) @ rng.normal(size=(3, 40))  # rank 3
    pca = fit_pca(x, 3)
    np.testing.assert_allclose(pca.inverse_transform(pca.transform(x)), x, atol=1e-9)
    assert fit_pca(x, 100).n_components_ == 10
