"""Hand-written forward and backward of a population of MLPs over one flat parameter buffer.

Training a population spends its time in small batched matrix products and in passes over
memory. Autograd adds a graph, fresh allocations for every intermediate (large ones are
page-faulted in anew each step, which can cost as much as the product itself) and extra
passes for the biases. For the architecture we know (linear layers, an elementwise
activation, cross-entropy or squared error) the backward is a few lines, so here it is
written out:

- All trainable tensors live in one flat buffer (:class:`FlatLayout`): a block of members
  holds one contiguous segment per tensor, so batched products write gradients straight
  into it (a strided output makes PyTorch run one small product per member) and the
  optimizer step is a few passes over a few segments.
- The first layer's bias is folded into its weight as one more input row, fed by a column
  of ones appended to the data (free: batches are gathered anyway): no broadcast copy, no
  separate gradient reduction, no separate optimizer pass for it.
- Hidden layers keep their weight as ``(in, out)``, so the forward products are plain
  ``(B, in) @ (in, out)``; the last layer computes its output transposed, ``(out, B)``,
  so the softmax runs over a strided class axis (over a short innermost axis of 10
  classes PyTorch's CPU softmax is some 30x slower). Bias gradients of the other layers
  are products with a vector of ones.
- Every intermediate goes into a buffer allocated once (``out=``), and gradients can be
  accumulated straight into SGD's momentum buffer (``beta``).

:class:`HandBackprop` covers the common case (no weight normalization, any activation of
:data:`weightspace.nets.spec.ACTIVATIONS`, with or without biases, classification or regression);
:class:`AutogradBackprop` computes the same thing with autograd through
:func:`weightspace.nets.forward.forward` and serves every other case (weight normalization).
Both have the same interface, and ``tests/nets/test_parity.py`` checks that they agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from weightspace.nets.forward import forward
from weightspace.nets.metrics import LEAKY_SLOPE, activation_
from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name

aten = torch.ops.aten

HAND_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "leaky_relu", "identity", "sine")
FOLDED = "layers.0"  # the segment of the first layer's weight with its bias folded in


# --------------------------------------------------------------------------- layout
class FlatLayout:
    """Where the trainable tensors of a population live in one flat buffer of M * P floats.

    Members are cut into consecutive ``blocks``. A block of ``c`` members owns ``c * P``
    consecutive floats: one segment per entry of :attr:`shapes`, each ``(c, *shape)``
    contiguous. (PyTorch runs a batched product whose output is not contiguous as one small
    product per member, several times slower, so segments are never strided.)

    ``fold=False``: one segment per trainable tensor, in ``state_dict`` layout.
    ``fold=True`` (:class:`HandBackprop`): hidden layers keep their weight transposed,
    ``(in, out)``; the first layer's bias is folded into its weight as one more input row,
    ``layers.0`` of shape ``(in + 1, out)`` (or ``(out, in + 1)`` when it is also the last
    layer), fed by a column of ones appended to the data. (Only the first: the data gets
    its column of ones for free when a batch is gathered, but appending one to an
    activation costs more than the bias it saves.)
    """

    def __init__(self, spec: MLPSpec, blocks: list[slice], fold: bool):
        self.spec, self.blocks, self.fold = spec, blocks, fold
        if fold and spec.weight_norm:
            raise ValueError("weight normalization has no folded layout")
        self.shapes: dict[str, tuple[int, ...]] = {}
        if fold:
            last = spec.n_layers - 1
            for l, (o, i) in enumerate(spec.layer_shapes()):
                if l == 0 and spec.bias:
                    self.shapes[FOLDED] = (i + 1, o) if l < last else (o, i + 1)
                    continue
                self.shapes[weight_name(l)] = (i, o) if l < last else (o, i)
                if spec.bias:
                    self.shapes[bias_name(l)] = (o,)
        else:
            self.shapes = dict(spec.param_shapes(trainable=True))
        self.size = sum(math.prod(s) for s in self.shapes.values())  # P
        self.n_members = blocks[-1].stop

    def new(self, device=None) -> Tensor:
        return torch.zeros(self.n_members * self.size, dtype=torch.float32, device=device)

    def segments(self, flat: Tensor, block: int) -> Params:
        """The segments of one block: name -> (c, *shape) contiguous views of ``flat``."""
        r = self.blocks[block]
        c = r.stop - r.start
        out, off = {}, r.start * self.size
        for k, shape in self.shapes.items():
            n = c * math.prod(shape)
            out[k] = flat[off : off + n].view(c, *shape)
            off += n
        return out

    def tensors(self, segments: Mapping[str, Tensor]) -> Params:
        """The trainable tensors of a block in ``state_dict`` layout: views, (c, *shape)."""
        if not self.fold:
            return dict(segments)
        out: Params = {}
        last = self.spec.n_layers - 1
        for l, (_, i) in enumerate(self.spec.layer_shapes()):
            if l == 0 and self.spec.bias:
                seg = segments[FOLDED]
                if l < last:  # (c, in + 1, out)
                    out[weight_name(0)], out[bias_name(0)] = seg[:, :i].mT, seg[:, i]
                else:  # (c, out, in + 1)
                    out[weight_name(0)], out[bias_name(0)] = seg[..., :i], seg[..., i]
                continue
            w = segments[weight_name(l)]
            out[weight_name(l)] = w.mT if l < last else w
            if self.spec.bias:
                out[bias_name(l)] = segments[bias_name(l)]
        return out

    def pack(self, params: Mapping[str, Tensor], flat: Tensor) -> Tensor:
        """Stacked tensors in ``state_dict`` layout, name -> (M, *shape), into ``flat``."""
        for j, r in enumerate(self.blocks):
            for k, t in self.tensors(self.segments(flat, j)).items():
                t.copy_(params[k][r])
        return flat

    def unpack(self, flat: Tensor) -> Params:
        """New contiguous tensors in ``state_dict`` layout: name -> (M, *shape)."""
        parts = [self.tensors(self.segments(flat, j)) for j in range(len(self.blocks))]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- hand backprop
def hand_supported(spec: MLPSpec) -> bool:
    """Whether :class:`HandBackprop` covers the spec (otherwise use autograd)."""
    return not spec.weight_norm and spec.activation in HAND_ACTIVATIONS


def with_ones(x: Tensor) -> Tensor:
    """x (..., n) with a column of ones appended: the input of a layer with a folded bias."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


class _Buffers:
    """Intermediates of one (block size, batch size), allocated once."""

    def __init__(self, spec: MLPSpec, c: int, b: int, device):
        def e(*shape):
            return torch.empty(*shape, dtype=torch.float32, device=device)

        hidden = spec.widths[1:-1]
        # Pre-activations, and the activations (computed in place for most activations;
        # gelu and sine keep their pre-activations for the backward).
        self.a = [e(c, b, w) for w in hidden]
        in_place = spec.activation in ("relu", "tanh", "sigmoid", "leaky_relu", "identity")
        self.h = self.a if in_place else [e(c, b, w) for w in hidden]
        self.dh = [e(c, b, w) for w in hidden]  # grads of h, then of a in place
        self.z = e(c, spec.widths[-1], b)  # output, transposed: (c, out, B)
        self.dz = e(c, spec.widths[-1], b)
        self.minus_one = torch.full((c, 1, b), -1.0, device=device)
        self.ones = torch.ones(1, b, 1, device=device).expand(c, b, 1)  # bias grads as products


class HandBackprop:
    """Loss and gradient of a block of members, written out (see the module docstring)."""

    def __init__(self, spec: MLPSpec, layout: FlatLayout, classification: bool):
        if not hand_supported(spec) or not layout.fold:
            raise ValueError(f"no hand-written backward for {spec}")
        self.spec, self.layout, self.classification = spec, layout, classification
        self.act = spec.activation
        self._bufs: dict[tuple[int, int], _Buffers] = {}

    @staticmethod
    def inputs(spec: MLPSpec, x: Tensor) -> Tensor:
        """The data matrix the members gather their batches from: (N, in (+ 1 ones))."""
        return with_ones(x) if spec.bias else x

    def layers(self, segments: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor | None]]:
        """(weight, bias) per layer of a block, as the products take them.

        Hidden layers: weight (c, in, out), bias (c, 1, out); the last layer: (c, out, in),
        (c, out, 1). The first layer's folded weight comes with bias None.
        """
        last = self.spec.n_layers - 1
        out = []
        for l in range(self.spec.n_layers):
            if l == 0 and self.spec.bias:
                out.append((segments[FOLDED], None))
                continue
            b = segments.get(bias_name(l))
            if b is not None:
                b = b.unsqueeze(1) if l < last else b.unsqueeze(2)
            out.append((segments[weight_name(l)], b))
        return out

    def _act_backward(self, dh: Tensor, a: Tensor, h: Tensor) -> None:
        """Gradient wrt the pre-activation, written over dh (the same as autograd's)."""
        act = self.act
        if act == "relu":
            aten.threshold_backward.grad_input(dh, h, 0.0, grad_input=dh)
        elif act == "tanh":
            aten.tanh_backward.grad_input(dh, h, grad_input=dh)
        elif act == "sigmoid":
            aten.sigmoid_backward.grad_input(dh, h, grad_input=dh)
        elif act == "gelu":
            aten.gelu_backward.grad_input(dh, a, grad_input=dh)
        elif act == "leaky_relu":
            aten.leaky_relu_backward.grad_input(dh, h, LEAKY_SLOPE, True, grad_input=dh)
        elif act == "sine":  # d sin(a) = cos(a); a is not needed after this, so cos goes there
            dh.mul_(torch.cos(a, out=a))

    def __call__(
        self,
        params: list[tuple[Tensor, Tensor | None]],
        grads: list[tuple[Tensor, Tensor | None]],
        x: Tensor,
        target: Tensor,
        beta: float = 0.0,
    ) -> Tensor:
        """Gradient of every member's mean loss into ``grads``; returns the (c,) losses.

        params / grads: :meth:`layers` of a block; ``grads = beta * grads + gradient``
        (``beta=0`` ignores what was there, NaN included). x: (c, B, in (+ 1)) rows of
        :meth:`inputs` (an expanded view when the members share their batch). target:
        (c, 1, B) class indices, or (c, out, B) regression targets.
        """
        c, b = x.shape[0], x.shape[1]
        buf = self._bufs.get((c, b))
        if buf is None:
            buf = self._bufs[(c, b)] = _Buffers(self.spec, c, b, x.device)
        n_hidden = self.spec.n_layers - 1

        # Forward. ins[l] is the input of layer l.
        ins = [x]
        for l in range(n_hidden):
            w, bias = params[l]
            if bias is None:
                torch.bmm(ins[-1], w, out=buf.a[l])  # (c, B, out)
            else:
                torch.baddbmm(bias, ins[-1], w, out=buf.a[l])
            activation_(self.act, buf.a[l], buf.h[l])  # identity: h is a
            ins.append(buf.h[l])
        w, bias = params[-1]
        if bias is None:
            z = torch.bmm(w, ins[-1].mT, out=buf.z)  # (c, out, B)
        else:
            z = torch.baddbmm(bias, w, ins[-1].mT, out=buf.z)

        # Loss, and its gradient wrt z up to the factor `scale` (applied in the products).
        if self.classification:
            lsm = torch._log_softmax(z, 1, False, out=buf.dz)  # classes on the strided axis
            loss = lsm.gather(1, target).mean((1, 2)).neg_()
            dz = lsm.exp_().scatter_add_(1, target, buf.minus_one)  # softmax - onehot
            scale = 1.0 / b
        else:
            dz = torch.sub(z, target, out=buf.dz)
            loss = dz.square().mean(1).mean(1)  # as per_example_loss(...).mean(1)
            scale = 2.0 / (z.shape[1] * b)

        # Backward: weight gradients, bias gradients as products with a vector of ones.
        gw, gb = grads[-1]
        torch.baddbmm(gw, dz, ins[-1], beta=beta, alpha=scale, out=gw)
        if gb is not None:
            torch.baddbmm(gb, dz, buf.ones, beta=beta, alpha=scale, out=gb)
        if n_hidden == 0:
            return loss
        dh = torch.baddbmm(buf.dh[-1], dz.mT, w, beta=0, alpha=scale, out=buf.dh[-1])
        for l in reversed(range(n_hidden)):
            self._act_backward(dh, buf.a[l], buf.h[l])
            gw, gb = grads[l]
            torch.baddbmm(gw, ins[l].mT, dh, beta=beta, out=gw)  # (c, in, out)
            if gb is not None:
                torch.baddbmm(gb.mT, dh.mT, buf.ones, beta=beta, out=gb.mT)
            if l > 0:
                dh = torch.bmm(dh, params[l][0].mT, out=buf.dh[l - 1])
        return loss


# --------------------------------------------------------------------------- autograd
class AutogradBackprop:
    """The same interface as :class:`HandBackprop`, by autograd through ``mlp.forward``.

    Serves any spec (weight normalization included), on an unfolded layout.
    """

    def __init__(self, spec: MLPSpec, layout: FlatLayout, classification: bool):
        if layout.fold:
            raise ValueError("AutogradBackprop needs an unfolded layout")
        self.spec, self.layout, self.classification = spec, layout, classification

    @staticmethod
    def inputs(spec: MLPSpec, x: Tensor) -> Tensor:
        return x

    def layers(self, segments: Mapping[str, Tensor]) -> Params:
        return dict(segments)

    def __call__(
        self,
        params: Params,
        grads: Params,
        x: Tensor,
        target: Tensor,
        beta=0.0,
    ) -> Tensor:
        names = list(params)
        with torch.enable_grad():
            leaves = {k: params[k].detach().requires_grad_(True) for k in names}
            out = forward(leaves, x, self.spec)  # (c, B, out)
            if self.classification:
                y = target.squeeze(1)  # (c, B)
                loss = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)
            else:
                loss = ((out - target.transpose(1, 2)) ** 2).mean(-1).mean(1)
            # Members are independent: the gradient of the sum is every member's own, and a
            # non-finite member gives non-finite gradients to itself only.
            gs = torch.autograd.grad(loss.sum(), [leaves[k] for k in names])
        for k, g in zip(names, gs):
            if beta == 0:
                grads[k].copy_(g)
            else:
                grads[k].mul_(beta).add_(g)
        return loss.detach()
