"""The flat layout, the hand backward's non-finite members, and the trainer's paths.

(The hand backward and the trainers against the reference forward: ``tests/nets/test_parity.py``.)
"""

import pandas as pd
import pytest
import torch
from populations import ARCHS, block_grads, same_weights, stacked_params

from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.init import init_population
from weightspace.zoo.population import sample_population
from weightspace.zoo.train.hand import FlatLayout, HandBackprop
from weightspace.zoo.train.loop import train_population
from weightspace.zoo.train.runs import split_members


def test_flat_layout_round_trip():
    for widths in ARCHS:
        for bias in (True, False):
            spec = MLPSpec(widths, bias=bias)
            params = stacked_params(spec, 7)
            for fold in (True, False):
                for size in (7, 3, 1):
                    layout = FlatLayout(spec, split_members(7, size), fold)
                    flat = layout.pack(params, layout.new())
                    assert flat.numel() == 7 * spec.n_params()
                    back = layout.unpack(flat)
                    assert back.keys() == params.keys()
                    for k, v in params.items():
                        assert torch.equal(back[k], v), (widths, bias, fold, size, k)
    spec = MLPSpec((4, 3, 2), weight_norm=True)
    layout = FlatLayout(spec, split_members(3, 3), fold=False)
    params = init_population(spec, sample_population({}, 3))
    back = layout.unpack(layout.pack(params, layout.new()))
    assert all(torch.equal(back[k], v) for k, v in params.items())


def test_hand_backward_reports_non_finite_members_only():
    spec = MLPSpec((5, 7, 3))
    params = stacked_params(spec, 3)
    params["layers.0.weight"][1, 0, 0] = float("nan")  # (an inf could die in a ReLU)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=gen)
    target = torch.randint(0, 3, (3, 1, 4), generator=gen)
    loss, g = block_grads(HandBackprop, spec, params, x, target, True, split_members(3, 3))
    assert torch.isfinite(loss).tolist() == [True, False, True]
    for v in g.values():
        assert torch.isfinite(v[[0, 2]]).all()


# --------------------------------------------------------------------------- trainer
@pytest.mark.parametrize("trainer", ["fused", "hand"])
def test_results_do_not_depend_on_blocks_or_threads(digits, trainer):
    hp = {"lr": [0.05, 0.02], "momentum": [0.0, 0.9], "label_noise": [0.0, 0.1], "epochs": 2}
    members = sample_population(hp, 9, seed=5)
    spec = MLPSpec((64, 8, 10))
    ref = train_population(digits, spec, members, [1], trainer=trainer)
    for kw in ({"chunk": 4}, {"chunk": 1}, {"threads": 2}, {"threads": 3, "chunk": 2}):
        got = train_population(digits, spec, members, [1], trainer=trainer, **kw)
        if trainer == "hand" and "chunk" in kw:
            # torch's kernels may sum in an order that depends on the block size
            same_weights(got, ref, rtol=1e-5, atol=1e-6)
            continue
        same_weights(got, ref)
        pd.testing.assert_frame_equal(got.metrics, ref.metrics, check_exact=True)


def test_unknown_trainer_is_refused(digits):
    members = sample_population({"epochs": 1}, 2)
    with pytest.raises(ConfigError, match="trainer: one of auto, fused, hand, autograd"):
        train_population(digits, MLPSpec((64, 4, 10)), members, trainer="jax")
