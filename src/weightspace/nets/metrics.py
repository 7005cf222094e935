"""THE loss and accuracy of ``M`` stacked networks on a dataset (x, y).

:func:`per_example_loss` is the loss of every example from the networks' outputs
(cross-entropy on class indices, squared error averaged over the outputs for regression).
:func:`evaluate` gives each network's mean loss and accuracy on a whole dataset, chunk by
chunk of examples (:func:`eval_chunk`), through :func:`forward_classes_first`: the reference
forward (:func:`weightspace.nets.forward.forward`) computed with the output's classes on a
strided axis, where a softmax over them is fast (``tests/nets/test_parity.py`` checks it
against the reference). :func:`psnr` turns an INR's mean squared error into dB.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.nets.spec import MLPSpec, layers, weight_name

EVAL_BUDGET = 1 << 22  # activation entries per evaluation forward
LEAKY_SLOPE = 0.01  # F.leaky_relu's default, as weightspace.nets.spec.ACTIVATIONS uses


class Supervised(Protocol):
    """What the metrics read of a task (:class:`weightspace.zoo.tasks.Task`)."""

    @property
    def is_classification(self) -> bool: ...  # y: class indices, else regression targets


def per_example_loss(out: Tensor, y: Tensor, task: Supervised) -> Tensor:
    """Loss of every example. out: (M, B, C); y: (B,) / (M, B) labels or (B, 1) targets."""
    if task.is_classification:
        m, b, _ = out.shape
        yy = y.expand(m, b) if y.dim() == 1 else y
        # Classes on dim 1, as a transposed view: log-softmax over a short innermost dim
        # (10 classes) is several times slower than over a strided one.
        return F.cross_entropy(out.transpose(1, 2), yy, reduction="none")
    return ((out - y) ** 2).mean(-1)


def eval_chunk(n_members: int, spec: MLPSpec) -> int:
    """Examples per evaluation forward: the widest activation (M, chunk, width) near 16 MB.

    Large intermediates are slow.
    """
    return max(1, EVAL_BUDGET // (n_members * max(spec.widths[1:])))


@torch.no_grad()
def evaluate(
    params: Mapping[str, Tensor],
    spec: MLPSpec,
    x: Tensor,
    y: Tensor,
    task: Supervised,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean loss and accuracy (NaN for regression) of every member on (x, y): two (M,).

    y: (N,) class indices, (N, out) regression targets shared by the members, or (M, N, out)
    each member's own targets (INR zoos: every member fits its own signal).

    ``chunk``: examples per forward (default: a budget of activation entries); a member's
    numbers depend on it (in the last bit), not on the other members.

    params: effective (``weight`` / ``bias``) stacked tensors. The numbers of
    :func:`weightspace.nets.forward.forward` and :func:`per_example_loss`, computed chunk by
    chunk of examples with the output's classes on a strided axis
    (:func:`forward_classes_first`), summed in float64.
    """
    m = next(iter(params.values())).shape[0]
    if chunk is None:
        chunk = eval_chunk(m, spec)
    chunk = max(1, min(len(x), chunk))
    loss_sum = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.float64, device=x.device)
    buffers: dict = {}
    own = y.dim() == 3  # per-member targets (M, N, out)
    for s in range(0, len(x), chunk):
        xb, yb = x[s : s + chunk], (y[:, s : s + chunk] if own else y[s : s + chunk])
        z = forward_classes_first(params, xb, spec, buffers)  # (M, out, n)
        n = xb.shape[0]
        if own:
            loss_sum += (z - yb.mT).square().mean(1).double().sum(1)
        elif task.is_classification:
            lsm = torch.log_softmax(z, 1)
            loss_sum -= lsm.gather(1, yb.view(1, 1, n).expand(m, 1, n)).double().sum((1, 2))
            # max's indices are argmax's (the first maximum; NaN counts as the maximum)
            correct += (z.max(1).indices == yb).double().sum(1)
        else:
            loss_sum += (z - yb.T).square().mean(1).double().sum(1)
    n = len(x)
    acc = correct / n if task.is_classification else torch.full_like(correct, float("nan"))
    return (loss_sum / n).float(), acc.float()


def psnr(mse: Tensor, peak: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / mse)``, elementwise (float64
    inside). ``peak``: the signal's value range (max - min), as INR zoos report it."""
    return (10 * torch.log10(peak.double() ** 2 / mse.double())).float()


# --------------------------------------------------------------------------- classes first
def activation_(name: str, a: Tensor, out: Tensor | None = None) -> Tensor:
    """The activation of ``a``, in place (into ``out`` if given; gelu needs one)."""
    out = a if out is None else out
    if name == "relu":
        return torch.clamp_min(a, 0.0, out=out)
    if name == "tanh":
        return torch.tanh(a, out=out)
    if name == "sigmoid":
        return torch.sigmoid(a, out=out)
    if name == "gelu":
        return torch._C._nn.gelu(a, out=out)
    if name == "leaky_relu":
        return torch._C._nn.leaky_relu(a, LEAKY_SLOPE, out=out)
    if name == "sine":
        return torch.sin(a, out=out)
    return out.copy_(a) if out is not a else a  # identity


def forward_classes_first(
    params: Mapping[str, Tensor],
    x: Tensor,
    spec: MLPSpec,
    buffers: dict[tuple[int, int], Tensor] | None = None,
) -> Tensor:
    """:func:`weightspace.nets.forward.forward` of effective parameters, output as (M, out, B).

    x: (B, in) shared by all members. Every product is a batched one per member (a shared
    input is an expanded view), so no intermediate is a transposed view of another: an
    elementwise pass over a transposed view is many times slower than over memory order.
    ``buffers`` (a dict kept by the caller) holds the intermediates across calls; fresh
    large tensors are page-faulted in at every call. The result lives in it too.
    """
    m, n = params[weight_name(0)].shape[0], x.shape[0]
    buffers = {} if buffers is None else buffers

    def buf(l: int, *shape: int) -> Tensor:
        t = buffers.get((l, n))
        if t is None:
            t = buffers[(l, n)] = x.new_empty(m, *shape)
        return t

    h = x.expand(m, *x.shape)  # (M, B, in)
    last = spec.n_layers - 1
    for l, (w, b) in enumerate(layers(params, spec)):  # w (M, out, in), b (M, out)
        if l < last:
            a = buf(l, n, w.shape[1])
            if b is None:
                torch.bmm(h, w.mT, out=a)
            else:
                torch.baddbmm(b.unsqueeze(1), h, w.mT, out=a)
            gelu = spec.activation == "gelu"
            h = activation_(spec.activation, a, buf(-1 - l, n, w.shape[1]) if gelu else None)
        else:
            z = buf(l, w.shape[1], n)
            if b is None:
                h = torch.bmm(w, h.mT, out=z)
            else:
                h = torch.baddbmm(b.unsqueeze(2), w, h.mT, out=z)
    return h
