"""Helpers shared by the zoo training tests and the parity tests (``tests/nets/test_parity.py``):
small stacked populations, one block's gradients, trained weights compared, a fused population.
"""

from __future__ import annotations

import numpy as np
import torch

from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.init import init_population
from weightspace.zoo.population import sample_population
from weightspace.zoo.train import fused
from weightspace.zoo.train.hand import FlatLayout, HandBackprop

ARCHS = [(5, 7, 3), (5, 7, 6, 3), (5, 3)]  # one hidden layer, two, none


def stacked_params(spec: MLPSpec, m: int, seed: int = 0) -> Params:
    members = sample_population(
        {"init": "normal", "init_std": 0.7, "bias_init": "normal"}, m, seed=seed
    )
    return init_population(spec, members)


def block_grads(kind, spec, params, x, target, classification, blocks, beta=0.0, start=None):
    """Loss and gradients (state_dict layout) of one block holding all members."""
    layout = FlatLayout(spec, blocks, fold=kind is HandBackprop)
    fn = kind(spec, layout, classification)
    flat = layout.pack(params, layout.new())
    grad = layout.new()
    if start is not None:
        layout.pack(start, grad)
    segs, gsegs = layout.segments(flat, 0), layout.segments(grad, 0)
    xb = kind.inputs(spec, x)
    loss = fn(fn.layers(segs), fn.layers(gsegs), xb, target, beta)
    return loss, layout.unpack(grad)


def same_weights(a, b, **tol):
    """Two training results hold the same weights (to ``tol`` if given, else exactly)."""
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        if tol:
            torch.testing.assert_close(a.weights[k], b.weights[k], **tol, msg=k)
        else:
            assert torch.equal(a.weights[k], b.weights[k]), k


def fused_population(spec, n, optimizer="sgd", seed=0):
    """Members and their :class:`~weightspace.zoo.train.fused.FusedPopulation`."""
    members = sample_population({"seed": list(range(n))}, n, seed=seed)
    lr = np.full(n, 0.05)
    return members, fused.FusedPopulation(
        spec,
        init_population(spec, members),
        optimizer,
        lr,
        np.full(n, 0.9),
        np.full(n, 1e-3),
    )
