"""Function features: how a network behaves on a fixed set of labelled probe inputs from its
task — the size and spread of its outputs, its confidence, entropy and margin, its loss and the
norm of its loss gradient.

All invariant to hidden-unit permutations; the output features to every symmetry that keeps
the function (the gradient norm not to relu's rescaling, which changes the gradient). Not a
baseline: the autoencoder reads them with ``FeatureSpec(function=True)``; the gradient norm in
particular separates a large learning rate from a long training, which weights alone confuse.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from weightspace.nets.forward import effective_params, forward
from weightspace.nets.spec import MLPSpec

__all__ = ["function_feature_names", "function_features_torch"]


def function_feature_names(spec: MLPSpec) -> list[str]:
    """Feature names of :func:`function_features_torch` (the softmax ones for classifiers,
    i.e. more than one output, only)."""
    softmax = ["f/confidence", "f/log_entropy", "f/log_margin"] if spec.widths[-1] > 1 else []
    return ["f/log_out_rms", "f/log_out_spread", *softmax, "f/log_loss", "f/log_grad_norm"]


def _log(x: Tensor) -> Tensor:
    return x.clamp_min(1e-12).log()


def function_features_torch(
    params: Mapping[str, Tensor],
    spec: MLPSpec,
    x: Tensor,
    y: Tensor,
    activation: str | None = None,
) -> Tensor:
    """How ``N`` stacked networks behave on the probe inputs ``x`` ``(B, in)`` with labels
    ``y`` (class indices ``(B,)``, or regression targets ``(B, out)``): ``(N, F)``, columns
    :func:`function_feature_names`, in the parameters' dtype.

    - ``log_out_rms``: log of the root mean square output; ``log_out_spread``: log of the
      mean over outputs of their standard deviation over the inputs.
    - Classifiers: ``confidence`` (mean top softmax probability), ``log_entropy`` (of the
      mean softmax entropy), ``log_margin`` (of the mean gap between the top two logits).
    - ``log_loss``: the task's loss (cross-entropy or MSE); ``log_grad_norm``: log of the
      norm of its gradient over all the network's weights and biases (weight
      normalization resolved first). SGD stops where its steps balance: the gradient left at
      a checkpoint scales with the learning rate that brought the network there.

    Depends only on the function and the norm of its gradient, so it is invariant to
    hidden-unit permutations (the gradient itself is permuted, its norm is not). Not differentiable
    with respect to ``params``: the gradient is computed on a detached copy, also under
    ``torch.no_grad`` or inference mode.
    """
    classification = not torch.is_floating_point(y)
    with torch.inference_mode(False), torch.enable_grad():
        # Clones made outside inference mode are ordinary tensors autograd can use.
        p = {
            k: v.detach().clone().requires_grad_(True)
            for k, v in effective_params(params, spec).items()
        }
        xx = x.to(next(iter(p.values())).dtype).clone()
        out = forward(p, xx, spec, activation)  # (N, B, C)
        yy = y.clone()
        if classification:
            logp = out.log_softmax(-1)
            loss = -logp.gather(-1, yy.expand(len(out), -1).unsqueeze(-1)).squeeze(-1).mean(1)
        else:
            loss = ((out - yy.to(out.dtype)) ** 2).mean((1, 2))
        grads = torch.autograd.grad(loss.sum(), list(p.values()))
    out, loss = out.detach(), loss.detach()
    grad_norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))
    cols = [_log(out.pow(2).mean((1, 2)).sqrt()), _log(out.std(1, correction=0).mean(-1))]
    if spec.widths[-1] > 1:
        logp = logp.detach() if classification else out.log_softmax(-1)
        prob = logp.exp()
        top2 = out.topk(2, -1).values
        cols += [
            prob.max(-1).values.mean(1),
            _log(-(prob * logp).sum(-1).mean(1)),
            _log((top2[..., 0] - top2[..., 1]).mean(1)),
        ]
    cols += [_log(loss), _log(grad_norm)]
    return torch.stack(cols, 1)
