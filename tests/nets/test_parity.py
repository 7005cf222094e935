"""Parity: each fast path against the one reference forward, ``weightspace.nets.forward.forward``.

The hand-written backward against autograd through the reference forward; the classes-first
forward and the chunked evaluation (:mod:`weightspace.nets.metrics`) against the reference
forward and the plain module; the fused kernel's evaluation against the torch path's; the
hand, autograd and fused trainers against each other.
"""

import pytest
import torch
import torch.nn.functional as F
from populations import ARCHS, block_grads, fused_population, same_weights, stacked_params

from weightspace.nets.forward import MLP, forward
from weightspace.nets.metrics import evaluate, forward_classes_first
from weightspace.nets.spec import ACTIVATIONS, MLPSpec
from weightspace.zoo.init import init_population
from weightspace.zoo.population import sample_population
from weightspace.zoo.train import fused as fused_kernel
from weightspace.zoo.train.hand import HAND_ACTIVATIONS, AutogradBackprop, HandBackprop
from weightspace.zoo.train.loop import train_population
from weightspace.zoo.train.runs import split_members


# --------------------------------------------------------------------------- hand backward
@pytest.mark.parametrize("activation", HAND_ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("classification", [True, False], ids=["ce", "mse"])
def test_hand_gradients_equal_autograd(activation, bias, classification):
    gen = torch.Generator().manual_seed(1)
    m, b = 6, 9
    for widths in ARCHS:
        spec = MLPSpec(widths, activation, bias)
        params = stacked_params(spec, m)
        n_out = widths[-1]
        x = torch.randn(m, b, widths[0], generator=gen)
        if classification:
            target = torch.randint(0, n_out, (m, 1, b), generator=gen)
        else:
            target = torch.randn(m, n_out, b, generator=gen)
        blocks = split_members(m, m)
        # The autograd path takes the data without the ones column the hand path appends.
        loss_h, g_h = block_grads(HandBackprop, spec, params, x, target, classification, blocks)
        loss_a, g_a = block_grads(AutogradBackprop, spec, params, x, target, classification, blocks)
        torch.testing.assert_close(loss_h, loss_a, rtol=1e-5, atol=1e-6)
        assert g_h.keys() == g_a.keys() == params.keys()
        for k in g_a:
            assert g_a[k].abs().sum() > 0, k  # the comparison is not of two zeros
            torch.testing.assert_close(g_h[k], g_a[k], rtol=1e-4, atol=1e-6, msg=k)
        # Accumulated into what was there (SGD's momentum): beta * old + gradient.
        old = stacked_params(spec, m, seed=9)
        _, acc = block_grads(
            HandBackprop, spec, params, x, target, classification, blocks, 0.5, old
        )
        for k in g_a:
            torch.testing.assert_close(acc[k], 0.5 * old[k] + g_a[k], rtol=1e-4, atol=1e-6)


def test_hand_gradients_of_a_shared_batch():
    # Members sharing their batch get it as an expanded view.
    torch.manual_seed(0)
    spec = MLPSpec((5, 7, 3), "tanh")
    params = stacked_params(spec, 4)
    x = torch.randn(1, 8, 5).expand(4, 8, 5)
    target = torch.randint(0, 3, (1, 1, 8)).expand(4, 1, 8)
    blocks = split_members(4, 4)
    loss_h, g_h = block_grads(HandBackprop, spec, params, x, target, True, blocks)
    loss_a, g_a = block_grads(AutogradBackprop, spec, params, x, target, True, blocks)
    torch.testing.assert_close(loss_h, loss_a)
    for k in g_a:
        torch.testing.assert_close(g_h[k], g_a[k], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- classes first
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_forward_classes_first_matches_forward(activation, bias):
    torch.manual_seed(0)
    for widths in ARCHS:
        spec = MLPSpec(widths, activation, bias)
        params = stacked_params(spec, 5)
        x = torch.randn(11, widths[0])
        expected = forward(params, x, spec)
        buffers: dict = {}
        for _ in range(2):  # the second call reuses the buffers
            got = forward_classes_first(params, x, spec, buffers)
            torch.testing.assert_close(got.mT, expected, rtol=1e-5, atol=1e-6)


def test_evaluate_regression_matches_forward(sine):
    spec = MLPSpec((1, 8, 1), "tanh")
    params = stacked_params(spec, 4)
    loss, acc = evaluate(params, spec, sine.x_test, sine.y_test, sine)
    out = forward(params, sine.x_test, spec)
    torch.testing.assert_close(loss, ((out - sine.y_test) ** 2).mean((1, 2)))
    assert acc.isnan().all()


def test_evaluate_matches_plain_modules(digits):
    # A wide population, so that an implementation evaluating in chunks has several.
    spec = MLPSpec((64, 128, 10))
    members = sample_population({"init": "normal", "init_std": 0.1, "bias_init": "normal"}, 100)
    params = init_population(spec, members)
    loss, acc = evaluate(params, spec, digits.x_test, digits.y_test, digits)
    assert loss.shape == acc.shape == (100,)
    for i in (0, 37, 99):
        net = MLP(spec)
        net.load_state_dict({k: v[i] for k, v in params.items()})
        with torch.no_grad():
            out = net(digits.x_test)
        assert acc[i].item() == pytest.approx((out.argmax(1) == digits.y_test).float().mean())
        assert loss[i].item() == pytest.approx(F.cross_entropy(out, digits.y_test).item(), 1e-5)


# --------------------------------------------------------------------------- fused kernel
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "sigmoid", "leaky_relu"])
def test_kernel_evaluates_as_the_torch_path(digits, sine, activation):
    for task, widths in ((digits, (64, 20, 10)), (sine, (1, 9, 7, 1))):
        spec = MLPSpec(widths, activation)
        members, pop = fused_population(spec, 5)
        with torch.no_grad():  # some members' outputs far apart, one's NaN
            pop.params[1] *= 3
            pop.params[3] = float("nan")
        params = pop.tensors()
        for x, y in ((task.x_train, task.y_train), (task.x_test, task.y_test)):
            loss, acc = pop.evaluate(x, y, slice(0, 5))
            ref_loss, ref_acc = evaluate(params, spec, x, y, task)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, equal_nan=True)
            torch.testing.assert_close(acc, ref_acc, rtol=0, atol=0, equal_nan=True)
        part = pop.evaluate(task.x_test, task.y_test, slice(2, 4))
        whole = pop.evaluate(task.x_test, task.y_test, slice(0, 5))
        torch.testing.assert_close(part[0], whole[0][2:4], rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------------------- trainers
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
        same_weights(hand, auto, rtol=1e-4, atol=1e-5)
        if activation not in fused_kernel.ACT_CODES:  # sine: until the kernel has it
            continue
        fused = train_population(task, spec, members, [1], trainer="fused")
        same_weights(fused, hand, rtol=1e-4, atol=1e-5)
