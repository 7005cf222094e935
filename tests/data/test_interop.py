"""Conversions to nfn's weight-space layout and to per-member state dicts."""

from __future__ import annotations

import pytest
import torch

from weightspace.data.dataset import WeightDataset
from weightspace.data.interop import from_nfn, from_state_dicts, to_nfn, to_state_dicts, to_wsfeat
from weightspace.nets.forward import MLP, forward
from weightspace.nets.layout import flatten_params
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.store import Zoo

SPEC = MLPSpec((6, 5, 4, 3))


def random_params(spec, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, *s, generator=g) for k, s in spec.param_shapes().items()}


def test_to_nfn_layout_and_round_trip():
    params = random_params(SPEC)
    weights, biases = to_nfn(params, SPEC)
    assert [tuple(w.shape) for w in weights] == [(3, 1, 5, 6), (3, 1, 4, 5), (3, 1, 3, 4)]
    assert [tuple(b.shape) for b in biases] == [(3, 1, 5), (3, 1, 4), (3, 1, 3)]
    assert torch.equal(weights[1][2, 0], params["layers.1.weight"][2])
    assert torch.equal(biases[2][0, 0], params["layers.2.bias"][0])
    back = from_nfn((weights, biases), SPEC)
    assert list(back) == list(SPEC.param_shapes())
    for k in params:
        assert torch.equal(back[k], params[k])
    # Flat vectors, in and out.
    flat = flatten_params(params, SPEC)
    w2, b2 = to_nfn(flat, SPEC)
    assert all(torch.equal(a, b) for a, b in zip(w2 + b2, weights + biases))
    assert torch.equal(from_nfn((weights, biases), SPEC, flat=True), flat)
    assert to_nfn(flat[0], SPEC)[0][0].shape == (1, 1, 5, 6)  # one vector: B=1


def test_without_biases_nfn_gets_zeros_and_they_are_dropped_back():
    spec = MLPSpec((4, 3, 2), bias=False)
    params = random_params(spec, n=2)
    weights, biases = to_nfn(params, spec)
    assert [tuple(b.shape) for b in biases] == [(2, 1, 3), (2, 1, 2)]
    assert all((b == 0).all() for b in biases)
    back = from_nfn((weights, biases), spec)
    assert set(back) == {"layers.0.weight", "layers.1.weight"}
    with pytest.raises(ValueError, match="expected weights"):
        from_nfn(((weights[0][:, 0],), (biases[0],)))


def test_state_dicts_load_into_plain_modules(api_zoo_path):
    zoo = Zoo.open(api_zoo_path)
    ds = WeightDataset(zoo, epochs=[3])
    batch = ds.__getitems__([0, 5, 11])
    spec = ds.spec
    sds = to_state_dicts(batch["weights"], spec)
    x = torch.randn(7, spec.widths[0], generator=torch.Generator().manual_seed(1))
    params = ds.params([0, 5, 11])
    outputs = forward(params, x, spec)  # (3, 7, 10)
    assert len(sds) == 3
    for i, (sd, member) in enumerate(zip(sds, batch["member_id"].tolist())):
        assert list(sd) == list(zoo.module(member, 3).state_dict())
        net = MLP(spec)
        net.load_state_dict(sd, strict=True)
        with torch.no_grad():
            torch.testing.assert_close(net(x), outputs[i])
            torch.testing.assert_close(net(x), zoo.module(member, 3)(x))
    # Copies, not views of the stacked tensors.
    copies = to_state_dicts(params, spec)
    copies[0]["layers.0.bias"].zero_()
    assert not (params["layers.0.bias"][0] == 0).all()
    stacked = from_state_dicts(to_state_dicts(params, spec))
    assert all(torch.equal(stacked[k], params[k]) for k in params)
    with pytest.raises(ValueError, match="need the spec"):
        to_state_dicts(batch["weights"])


def test_nfn_layer_accepts_a_converted_batch(api_zoo_path):
    pytest.importorskip("nfn")
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
    from nfn.layers import NPLinear, NPPool

    torch.manual_seed(0)
    ds = WeightDataset(Zoo.open(api_zoo_path), epochs=[3])
    batch = ds.__getitems__([0, 1, 2, 3])
    wsfeat = to_wsfeat(batch["weights"], ds.spec)
    assert isinstance(wsfeat, WeightSpaceFeatures) and len(wsfeat) == 2
    net_spec = network_spec_from_wsfeat(wsfeat)
    layer = NPLinear(net_spec, in_channels=1, out_channels=8)
    out = layer(wsfeat)
    assert [tuple(w.shape) for w in out.weights] == [(4, 8, 16, 64), (4, 8, 10, 16)]
    assert [tuple(b.shape) for b in out.biases] == [(4, 8, 16), (4, 8, 10)]
    pooled = NPPool(net_spec)(out)
    assert pooled.shape == (4, 8, NPPool.get_num_outs(net_spec)) and torch.isfinite(pooled).all()
    # Hidden-unit permutation equivariance of the layer holds on our layout.
    perm = torch.randperm(16)
    params = ds.params([0, 1, 2, 3])
    permuted = {
        **params,
        "layers.0.weight": params["layers.0.weight"][:, perm],
        "layers.0.bias": params["layers.0.bias"][:, perm],
        "layers.1.weight": params["layers.1.weight"][:, :, perm],
    }
    out_p = layer(to_wsfeat(permuted, ds.spec))
    torch.testing.assert_close(out_p.weights[0], out.weights[0][:, :, perm])
    torch.testing.assert_close(out_p.weights[1], out.weights[1][:, :, :, perm])
    # nfn's own state-dict conversion agrees with ours.
    from nfn.common import params_to_state_dicts

    theirs = params_to_state_dicts(list(ds.spec.param_shapes()), wsfeat)
    ours = to_state_dicts(batch["weights"], ds.spec)
    for a, b in zip(theirs, ours):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    back = from_nfn(out.map(lambda t: t[:, :1]), ds.spec)
    assert back["layers.1.weight"].shape == (4, 10, 16)
