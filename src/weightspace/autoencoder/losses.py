"""The autoencoder's loss terms, as functions of tensors (the module weights and logs them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FUNCTIONAL_KINDS", "functional_loss", "nt_xent", "reconstruction_loss"]

FUNCTIONAL_KINDS = ("mse", "kl")


def reconstruction_loss(pred: Tensor, target: Tensor, tensor_sizes: Sequence[int]) -> Tensor:
    """MSE per ``state_dict`` tensor of flat vectors ``(N, D)`` (``tensor_sizes`` sum to D),
    then the mean over tensors: a small bias vector counts as much as a large matrix."""
    pairs = zip(pred.split(tensor_sizes, -1), target.split(tensor_sizes, -1))
    per_tensor = [F.mse_loss(p, t) for p, t in pairs]
    return torch.stack(per_tensor).mean()


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR): ``a[i]`` and ``b[i]`` are positives, the other 2N - 2 negatives."""
    z = F.normalize(torch.cat([a, b]), dim=-1)  # (2N, P)
    sim = z @ z.T / temperature  # (2N, 2N)
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(a)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def functional_loss(pred: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Decoded networks' outputs ``pred`` vs the originals' ``target``, both
    ``(N, n_probe, out)``: ``"mse"`` on outputs, or ``"kl"`` between softmaxes."""
    if kind == "mse":
        return F.mse_loss(pred, target)
    return F.kl_div(
        F.log_softmax(pred, -1).flatten(0, 1),
        F.log_softmax(target, -1).flatten(0, 1),
        reduction="batchmean",
        log_target=True,
    )
