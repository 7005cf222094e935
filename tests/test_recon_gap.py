"""benchmarks/recon_gap.py's measures: label agreement, weight error, noise, nearest members."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import load_script

from weightspace.nets.spec import MLPSpec

gap = load_script("benchmarks/recon_gap.py")

SPEC = MLPSpec((5, 8, 3), activation="tanh")


def _nets(m: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(m, *shape, generator=g) for name, shape in SPEC.param_shapes().items()
    }


def test_a_network_agrees_with_itself_and_not_with_its_negation():
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))
    p = _nets(4)
    pred = gap.predictions(p, SPEC, x)  # (4, 50)
    assert pred.shape == (4, 50)
    np.testing.assert_array_equal(gap.agreement(pred, pred), np.ones(4))
    # Negating the last layer flips the order of the logits: the argmax changes everywhere
    # (ties aside), so agreement drops to 0.
    last = [k for k in p if k.startswith("layers.1")]
    flipped = {k: -v if k in last else v for k, v in p.items()}
    assert gap.agreement(pred, gap.predictions(flipped, SPEC, x)).max() == 0.0


def test_split_agreement_separates_right_and_wrong_inputs():
    y = torch.tensor([0, 1, 2, 0])
    a = torch.tensor([[0, 1, 0, 1]])  # right on inputs 0, 1; wrong on 2, 3
    b = torch.tensor([[0, 2, 0, 2]])  # agrees on 0 (right) and 2 (same mistake)
    assert gap.split_agreement(a, b, y) == (0.5, 0.5)
    assert gap.split_agreement(a, a, y) == (1.0, 1.0)


def test_relative_error_and_noise_scale():
    p = _nets(3)
    assert np.allclose(gap.relative_error(p, {k: 2 * v for k, v in p.items()}), 1.0)
    assert np.allclose(gap.relative_error(p, p), 0.0)
    g = torch.Generator().manual_seed(0)
    big = {"w": torch.zeros(2, 200, 200)}
    noisy = gap.add_noise(big, {"w": torch.tensor([0.0, 0.5])}, g)
    assert torch.equal(noisy["w"][0], big["w"][0])  # sigma 0: unchanged
    assert gap.tensor_rms(noisy)["w"][1].item() == pytest.approx(0.5, rel=0.02)


def test_nearest_members_same_init_closest_hyperparameters():
    items = pd.DataFrame(
        {
            "init": ["a", "a", "a", "b"],
            "lr": [1e-3, 1.1e-3, 1e-2, 1e-3],
            "weight_decay": [1e-4, 1e-4, 1e-4, 1e-4],
            "init_scale": [1.0, 1.0, 1.0, 1.0],
        }
    )
    # Row 3 is the only "b": nobody to pair with, though its hyperparameters match row 0.
    np.testing.assert_array_equal(gap.nearest_members(items), [1, 0, 1, -1])
