"""The hand-written backward against autograd, the flat layout, and the trainer's paths."""

import pandas as pd
import pytest
import torch

from weightspace.errors import ConfigError
from weightspace.nets.forward import forward
from weightspace.nets.spec import ACTIVATIONS, MLPSpec
from weightspace.zoo.init import init_population
from weightspace.zoo.population import sample_population
from weightspace.zoo.train.hand import (
    HAND_ACTIVATIONS,
    AutogradBackprop,
    FlatLayout,
    HandBackprop,
    forward_classes_first,
)
from weightspace.zoo.train.loop import _chunks, evaluate, train_population

ARCHS = [(5, 7, 3), (5, 7, 6, 3), (5, 3)]  # one hidden layer, two, none


def _params(spec: MLPSpec, m: int, seed: int = 0) -> dict[str, torch.Tensor]:
    members = sample_population(
        {"init": "normal", "init_std": 0.7, "bias_init": "normal"}, m, seed=seed
    )
    return init_population(spec, members)


def _grads(kind, spec, params, x, target, classification, blocks, beta=0.0, start=None):
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


def test_flat_layout_round_trip():
    for widths in ARCHS:
        for bias in (True, False):
            spec = MLPSpec(widths, bias=bias)
            params = _params(spec, 7)
            for fold in (True, False):
                for size in (7, 3, 1):
                    layout = FlatLayout(spec, _chunks(7, size), fold)
                    flat = layout.pack(params, layout.new())
                    assert flat.numel() == 7 * spec.n_params()
                    back = layout.unpack(flat)
                    assert back.keys() == params.keys()
                    for k, v in params.items():
                        assert torch.equal(back[k], v), (widths, bias, fold, size, k)
    spec = MLPSpec((4, 3, 2), weight_norm=True)
    layout = FlatLayout(spec, _chunks(3, 3), fold=False)
    params = init_population(spec, sample_population({}, 3))
    back = layout.unpack(layout.pack(params, layout.new()))
    assert all(torch.equal(back[k], v) for k, v in params.items())


@pytest.mark.parametrize("activation", HAND_ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("classification", [True, False], ids=["ce", "mse"])
def test_hand_gradients_equal_autograd(activation, bias, classification):
    gen = torch.Generator().manual_seed(1)
    m, b = 6, 9
    for widths in ARCHS:
        spec = MLPSpec(widths, activation, bias)
        params = _params(spec, m)
        n_out = widths[-1]
        x = torch.randn(m, b, widths[0], generator=gen)
        if classification:
            target = torch.randint(0, n_out, (m, 1, b), generator=gen)
        else:
            target = torch.randn(m, n_out, b, generator=gen)
        blocks = _chunks(m, m)
        # The autograd path takes the data without the ones column the hand path appends.
        loss_h, g_h = _grads(HandBackprop, spec, params, x, target, classification, blocks)
        loss_a, g_a = _grads(AutogradBackprop, spec, params, x, target, classification, blocks)
        torch.testing.assert_close(loss_h, loss_a, rtol=1e-5, atol=1e-6)
        assert g_h.keys() == g_a.keys() == params.keys()
        for k in g_a:
            assert g_a[k].abs().sum() > 0, k  # the comparison is not of two zeros
            torch.testing.assert_close(g_h[k], g_a[k], rtol=1e-4, atol=1e-6, msg=k)
        # Accumulated into what was there (SGD's momentum): beta * old + gradient.
        old = _params(spec, m, seed=9)
        _, acc = _grads(HandBackprop, spec, params, x, target, classification, blocks, 0.5, old)
        for k in g_a:
            torch.testing.assert_close(acc[k], 0.5 * old[k] + g_a[k], rtol=1e-4, atol=1e-6)


def test_hand_gradients_of_a_shared_batch():
    # Members sharing their batch get it as an expanded view.
    torch.manual_seed(0)
    spec = MLPSpec((5, 7, 3), "tanh")
    params = _params(spec, 4)
    x = torch.randn(1, 8, 5).expand(4, 8, 5)
    target = torch.randint(0, 3, (1, 1, 8)).expand(4, 1, 8)
    blocks = _chunks(4, 4)
    loss_h, g_h = _grads(HandBackprop, spec, params, x, target, True, blocks)
    loss_a, g_a = _grads(AutogradBackprop, spec, params, x, target, True, blocks)
    torch.testing.assert_close(loss_h, loss_a)
    for k in g_a:
        torch.testing.assert_close(g_h[k], g_a[k], rtol=1e-4, atol=1e-6)


def test_hand_backward_reports_non_finite_members_only():
    spec = MLPSpec((5, 7, 3))
    params = _params(spec, 3)
    params["layers.0.weight"][1, 0, 0] = float("nan")  # (an inf could die in a ReLU)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=gen)
    target = torch.randint(0, 3, (3, 1, 4), generator=gen)
    loss, g = _grads(HandBackprop, spec, params, x, target, True, _chunks(3, 3))
    assert torch.isfinite(loss).tolist() == [True, False, True]
    for v in g.values():
        assert torch.isfinite(v[[0, 2]]).all()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_forward_classes_first_matches_forward(activation, bias):
    torch.manual_seed(0)
    for widths in ARCHS:
        spec = MLPSpec(widths, activation, bias)
        params = _params(spec, 5)
        x = torch.randn(11, widths[0])
        expected = forward(params, x, spec)
        buffers: dict = {}
        for _ in range(2):  # the second call reuses the buffers
            got = forward_classes_first(params, x, spec, buffers)
            torch.testing.assert_close(got.mT, expected, rtol=1e-5, atol=1e-6)


def test_evaluate_regression_matches_forward(sine):
    spec = MLPSpec((1, 8, 1), "tanh")
    params = _params(spec, 4)
    loss, acc = evaluate(params, spec, sine.x_test, sine.y_test, sine)
    out = forward(params, sine.x_test, spec)
    torch.testing.assert_close(loss, ((out - sine.y_test) ** 2).mean((1, 2)))
    assert acc.isnan().all()


# --------------------------------------------------------------------------- trainer
def _same_weights(a, b, **tol):
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        if tol:
            torch.testing.assert_close(a.weights[k], b.weights[k], **tol, msg=k)
        else:
            assert torch.equal(a.weights[k], b.weights[k]), k


@pytest.mark.parametrize("activation", HAND_ACTIVATIONS)
def test_hand_and_autograd_training_agree(digits, sine, activation):
    hp = {
        "activation": activation,
        "lr": [0.02, 0.05],
        "momentum": 0.9,  # shared: gradients go straight into the momentum buffer
        "weight_decay": [0.0, 1e-3],
        "data_order": ["per_member", "shared"],
        "batch_size": 50,
        "epochs": 2,
    }
    cases = [
        (digits, MLPSpec((64, 8, 10)), hp),
        (digits, MLPSpec((64, 6, 5, 10), bias=False), {**hp, "optimizer": "adam", "lr": 0.01}),
        (sine, MLPSpec((1, 8, 1)), {**hp, "momentum": [0.0, 0.5]}),
    ]
    for task, spec, h in cases:
        members = sample_population(h, 4, seed=3)
        hand = train_population(task, spec, members, [1], trainer="hand")
        auto = train_population(task, spec, members, [1], trainer="autograd")
        _same_weights(hand, auto, rtol=1e-4, atol=1e-5)
        fused = train_population(task, spec, members, [1], trainer="fused")
        _same_weights(fused, hand, rtol=1e-4, atol=1e-5)


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
            _same_weights(got, ref, rtol=1e-5, atol=1e-6)
            continue
        _same_weights(got, ref)
        pd.testing.assert_frame_equal(got.metrics, ref.metrics, check_exact=True)


def test_unknown_trainer_is_refused(digits):
    members = sample_population({"epochs": 1}, 2)
    with pytest.raises(ConfigError, match="trainer: one of auto, fused, hand, autograd"):
        train_population(digits, MLPSpec((64, 4, 10)), members, trainer="jax")
