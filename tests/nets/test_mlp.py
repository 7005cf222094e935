"""The batched MLP forward, its plain-module twin, weight normalization and initialization."""

import math

import pandas as pd
import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

from weightspace.errors import ConfigError
from weightspace.nets.forward import (
    MLP,
    effective_params,
    forward,
    member_params,
    weight_norm_weight,
)
from weightspace.nets.spec import ACTIVATIONS, MLPSpec
from weightspace.zoo.init import BIAS_INITS, INIT_SCHEMES, init_member, init_population
from weightspace.zoo.population import sample_population


def _members(n: int, seed: int = 0, **hparams) -> pd.DataFrame:
    # normal weights and biases: every parameter nonzero, so a mixed-up bias or layer shows.
    hp = {"init": "normal", "init_std": 0.5, "bias_init": "normal", **hparams}
    return sample_population(hp, n, seed=seed)


def _module(spec: MLPSpec, state: dict[str, torch.Tensor]) -> MLP:
    net = MLP(spec)
    net.load_state_dict(state, strict=True)
    return net


# --------------------------------------------------------------------------- spec
def test_spec_shapes_match_the_plain_module():
    spec = MLPSpec((7, 5, 4, 3))
    net = MLP(spec)
    sd = net.state_dict()
    assert list(sd) == list(spec.param_shapes())
    assert {k: tuple(v.shape) for k, v in sd.items()} == spec.param_shapes()
    assert spec.n_params() == sum(v.numel() for v in sd.values())
    assert spec.n_layers == 3
    assert spec.layer_shapes() == [(5, 7), (4, 5), (3, 4)]


def test_spec_without_bias_and_with_weight_norm():
    spec = MLPSpec((4, 3, 2), bias=False, weight_norm=True)
    assert list(MLP(spec).state_dict()) == ["layers.0.weight", "layers.1.weight"]
    assert spec.param_shapes(trainable=True) == {
        "layers.0.weight_g": (3,),
        "layers.0.weight_v": (3, 4),
        "layers.1.weight_g": (2,),
        "layers.1.weight_v": (2, 3),
    }
    assert spec.n_params() == 4 * 3 + 3 * 2


@pytest.mark.parametrize("widths", [(5,), (5, 0, 2), ()])
def test_spec_rejects_bad_widths(widths):
    with pytest.raises(ConfigError, match="model.widths"):
        MLPSpec(widths)


def test_spec_rejects_unknown_activation():
    with pytest.raises(ConfigError, match="activation: unknown 'swish'"):
        MLPSpec((3, 2), activation="swish")


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_batched_forward_equals_module_per_member(activation, bias):
    spec = MLPSpec((6, 9, 7, 3), activation=activation, bias=bias)
    m, b = 5, 11
    params = init_population(spec, _members(m))
    gen = torch.Generator().manual_seed(1)
    shared_x = torch.randn(b, 6, generator=gen)
    own_x = torch.randn(m, b, 6, generator=gen)

    out_shared = forward(params, shared_x, spec)
    out_own = forward(params, own_x, spec)
    assert out_shared.shape == out_own.shape == (m, b, 3)
    for i in range(m):
        net = _module(spec, member_params(params, i))
        with torch.no_grad():
            torch.testing.assert_close(out_shared[i], net(shared_x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out_own[i], net(own_x[i]), atol=1e-5, rtol=1e-5)
    # Members differ, so a forward that mixed them up would not pass the loop above by luck.
    assert not torch.allclose(out_shared[0], out_shared[1])


def test_forward_activation_argument_overrides_spec():
    spec = MLPSpec((4, 8, 2), activation="relu")
    params = init_population(spec, _members(3))
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    tanh_spec = MLPSpec((4, 8, 2), activation="tanh")
    torch.testing.assert_close(forward(params, x, spec, "tanh"), forward(params, x, tanh_spec))
    assert not torch.allclose(forward(params, x, spec), forward(params, x, tanh_spec))


def test_weight_norm_effective_weight_is_g_v_over_norm_v():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 5, generator=gen)
    v = torch.randn(4, 5, 3, generator=gen)
    w = weight_norm_weight(g, v)
    for m in range(4):
        for o in range(5):
            expected = g[m, o] * v[m, o] / v[m, o].norm()
            torch.testing.assert_close(w[m, o], expected)
    # Each row's norm is |g|, its direction that of v.
    torch.testing.assert_close(w.norm(dim=-1), g.abs())


def test_weight_norm_forward_matches_pytorch_parametrization():
    spec = MLPSpec((6, 8, 3), activation="tanh", weight_norm=True)
    gen = torch.Generator().manual_seed(3)
    params = {
        "layers.0.weight_g": torch.rand(2, 8, generator=gen) + 0.5,
        "layers.0.weight_v": torch.randn(2, 8, 6, generator=gen),
        "layers.0.bias": torch.randn(2, 8, generator=gen),
        "layers.1.weight_g": torch.rand(2, 3, generator=gen) + 0.5,
        "layers.1.weight_v": torch.randn(2, 3, 8, generator=gen),
        "layers.1.bias": torch.randn(2, 3, generator=gen),
    }
    eff = effective_params(params, spec)
    assert set(eff) == set(spec.param_shapes())
    x = torch.randn(7, 6, generator=gen)
    out = forward(params, x, spec)
    torch.testing.assert_close(out, forward(eff, x, spec))
    for i in range(2):
        net = MLP(spec)
        for l, layer in enumerate(net.layers):
            weight_norm(layer)
            with torch.no_grad():
                pw = layer.parametrizations.weight
                pw.original0.copy_(params[f"layers.{l}.weight_g"][i].unsqueeze(1))
                pw.original1.copy_(params[f"layers.{l}.weight_v"][i])
                layer.bias.copy_(params[f"layers.{l}.bias"][i])
        with torch.no_grad():
            torch.testing.assert_close(out[i], net(x), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(net.layers[0].weight, eff["layers.0.weight"][i])


# --------------------------------------------------------------------------- init
def _hp(init="kaiming", bias_init="zeros", seed=0, **kw):
    return {
        "seed": seed,
        "init": init,
        "bias_init": bias_init,
        "init_scale": kw.get("init_scale", 1.0),
        "init_std": kw.get("init_std", 1.0),
        "init_value": kw.get("init_value", 0.5),
    }


BIG = MLPSpec((1024, 512, 256))


@pytest.mark.parametrize(
    "scheme, std_of_layer",
    [
        ("kaiming", lambda o, i: math.sqrt(2 / i)),
        ("xavier", lambda o, i: math.sqrt(2 / (i + o))),
        ("normal", lambda o, i: 0.3),
        ("uniform", lambda o, i: 1 / math.sqrt(i) / math.sqrt(3)),
    ],
)
def test_init_scheme_std(scheme, std_of_layer):
    scale = 1.5
    p = init_member(BIG, _hp(scheme, init_std=0.3, init_scale=scale))
    for l, (o, i) in enumerate(BIG.layer_shapes()):
        w = p[f"layers.{l}.weight"]
        expected = std_of_layer(o, i) * scale
        assert w.shape == (o, i) and w.dtype == torch.float32
        assert abs(w.mean().item()) < 0.05 * expected
        assert w.std().item() == pytest.approx(expected, rel=0.02)
        torch.testing.assert_close(p[f"layers.{l}.bias"], torch.zeros(o))


def test_uniform_init_stays_within_pytorch_default_bound():
    p = init_member(BIG, _hp("uniform", bias_init="uniform"))
    for l, (_, i) in enumerate(BIG.layer_shapes()):
        bound = 1 / math.sqrt(i)
        for name in ("weight", "bias"):
            t = p[f"layers.{l}.{name}"]
            assert t.abs().max().item() <= bound
            assert t.abs().max().item() > 0.95 * bound  # fills the range


def test_constant_init_has_all_values_equal():
    spec = MLPSpec((5, 4, 3))
    p = init_member(spec, _hp("constant", bias_init="constant", init_value=0.25, init_scale=2))
    for t in p.values():
        assert torch.all(t == 0.5)


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (50, 50)])
def test_orthogonal_init_is_semi_orthogonal(shape):
    o, i = shape
    p = init_member(MLPSpec((i, o)), _hp("orthogonal", init_scale=2.0))
    w = p["layers.0.weight"] / 2.0
    gram = w @ w.T if o <= i else w.T @ w
    torch.testing.assert_close(gram, torch.eye(min(o, i)), atol=1e-5, rtol=0)


def test_bias_inits():
    spec = MLPSpec((400, 300))
    normal = init_member(spec, _hp(bias_init="normal", init_std=0.2))["layers.0.bias"]
    assert normal.std().item() == pytest.approx(0.2, rel=0.15)
    const = init_member(spec, _hp(bias_init="constant", init_value=-0.3))["layers.0.bias"]
    assert torch.all(const == torch.tensor(-0.3))
    assert set(BIAS_INITS) == {"zeros", "normal", "uniform", "constant"}


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_init_depends_on_seed_only(scheme):
    spec = MLPSpec((8, 6, 3))
    torch.manual_seed(123)  # the global stream must not matter
    a = init_member(spec, _hp(scheme, bias_init="normal", seed=7))
    torch.manual_seed(456)
    torch.rand(10)
    b = init_member(spec, _hp(scheme, bias_init="normal", seed=7))
    c = init_member(spec, _hp(scheme, bias_init="normal", seed=8))
    for k in a:
        assert torch.equal(a[k], b[k])
    if scheme != "constant":
        assert not torch.equal(a["layers.0.weight"], c["layers.0.weight"])


@pytest.mark.parametrize("weight_norm_", [False, True])
def test_member_init_does_not_depend_on_the_rest_of_the_population(weight_norm_):
    spec = MLPSpec((8, 6, 3), weight_norm=weight_norm_)
    members = _members(10, init=["kaiming", "orthogonal"], init_scale=[1.0, 0.5])
    full = init_population(spec, members)
    assert set(full) == set(spec.param_shapes(trainable=True))
    for pick in ([3], [7, 2], [9, 0, 5]):
        part = init_population(spec, members.iloc[pick])
        for k in full:
            assert torch.equal(part[k], full[k][pick])
    # And each member's row is exactly init_member's (effective) draw.
    eff = effective_params(full, spec)
    for i, (_, row) in enumerate(members.iterrows()):
        for k, v in init_member(spec, row).items():
            torch.testing.assert_close(eff[k][i], v, atol=1e-6, rtol=1e-6)
    if weight_norm_:
        torch.testing.assert_close(
            full["layers.0.weight_g"], full["layers.0.weight_v"].norm(dim=-1)
        )
