"""encoder.center=entry: per-entry running standardization inside the graph and nfn encoders
(for zoos whose members share one initialization)."""

from __future__ import annotations

import pytest
import torch

from weightspace.autoencoder.entry_norm import EntryStandardizer
from weightspace.autoencoder.graph import GraphEncoder
from weightspace.autoencoder.nfn import NFNEncoder
from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec, layers

SPEC = MLPSpec((2, 8, 8, 1), "sine", True)


def shared_init_zoo(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Members = one large shared init + small per-member deviations (as in a shared-init
    INR zoo: the deviations are ~1% of the entries' scale)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for l, (o, i) in enumerate(SPEC.layer_shapes()):
        for name, shape in ((f"layers.{l}.weight", (o, i)), (f"layers.{l}.bias", (o,))):
            base = 30 * torch.rand(shape, generator=g) - 15
            out[name] = base + 0.1 * torch.randn((n, *shape), generator=g)
    return out


def test_standardizer_centres_each_entry_and_keeps_running_stats():
    params = shared_init_zoo()
    wb = list(layers(params, SPEC))
    std = EntryStandardizer(SPEC.layer_shapes(), bias=True)
    out = std(wb)  # training: batch statistics, running ones updated
    for w, b in out:
        assert w.mean(0).abs().max() < 1e-4 and (w.std(0, unbiased=False) - 1).abs().max() < 1e-3
        assert b.mean(0).abs().max() < 1e-4
    std.eval()  # evaluation: the running statistics (here: of that one batch)
    for (w, _), (w0, _) in zip(std(wb), out):
        torch.testing.assert_close(w, w0, atol=2e-2, rtol=2e-2)  # running var is unbiased
    std.train()  # one network alone: no std to take, the running statistics are read
    one = std([(w[:1], b[:1]) for w, b in wb])
    assert all(torch.isfinite(w).all() for w, _ in one)


@pytest.mark.parametrize("kind", ["graph", "nfn"])
def test_center_entry_lets_the_encoder_see_small_deviations(kind):
    """Two members differing by a 1% deviation: without centring their latents nearly agree
    (the shared init dominates); with it they differ by as much as two random members do."""
    torch.manual_seed(0)
    params = shared_init_zoo()

    def make(center):
        torch.manual_seed(0)
        if kind == "graph":
            return GraphEncoder(SPEC, 8, ["sine"], hidden=16, symmetry="permutation", center=center)
        return NFNEncoder(SPEC, 8, channels=4, canonical=False, center=center)

    spread = {}
    for center in (None, "entry"):
        enc = make(center)
        enc(params)  # running statistics from the zoo (no-op without centring)
        enc.eval()
        with torch.no_grad():
            z = enc(params)
        spread[center] = (z.std(0).mean() / z.abs().mean()).item()
    assert spread["entry"] > 5 * spread[None]


def test_center_default_off_and_bad_value_refused():
    assert GraphEncoder(SPEC, 8, ["sine"]).standardize is None
    assert NFNEncoder(SPEC, 8).standardize is None
    with pytest.raises(ConfigError, match="encoder.center"):
        GraphEncoder(SPEC, 8, ["sine"], center="member")
    with pytest.raises(
        ConfigError, match=r"encoder.center: 'tensor' \(choose null, entry or layer"
    ):
        NFNEncoder(SPEC, 8, center="tensor")
    assert type(NFNEncoder(SPEC, 8, center="layer").standardize).__name__ == "LayerScaler"


def test_center_entry_state_reloads_strictly():
    params = shared_init_zoo()
    enc = NFNEncoder(SPEC, 8, channels=4, canonical=False, center="entry")
    enc(params)
    again = NFNEncoder(SPEC, 8, channels=4, canonical=False, center="entry")
    again.load_state_dict(enc.state_dict(), strict=True)
    enc.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(params), again(params))
