"""The autoencoder's loss terms, as functions of tensors (the module weights and logs them),
and the check of their options (:func:`check_loss_options`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import ConfigError

__all__ = [
    "CONTRASTIVE_POSITIVES",
    "FUNCTIONAL_KINDS",
    "check_loss_options",
    "first_checkpoint_rows",
    "functional_loss",
    "member_keys",
    "nt_xent",
    "origin_loss",
    "reconstruction_loss",
    "sup_con",
]

FUNCTIONAL_KINDS = ("mse", "kl")
#: what the contrastive loss pairs: two views of a checkpoint, or the checkpoints of a member.
CONTRASTIVE_POSITIVES = ("views", "member")


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


def member_keys(batch: Mapping[str, Tensor]) -> Tensor:
    """One integer per item of a batch naming its member across zoos: ``(B,)`` int64."""
    return batch["zoo_index"].long() * (1 << 32) + batch["member_id"].long()


def first_checkpoint_rows(keys: Tensor, epochs: Tensor) -> Tensor:
    """For each row, the row of its member's checkpoint at the batch's earliest epoch
    (itself when it is one), or -1 when the batch holds none: ``(N,)`` int64."""
    first = epochs == epochs.min()
    match = (keys[:, None] == keys[None, :]) & first[None, :]
    return torch.where(match.any(1), match.int().argmax(1), -1)


def origin_loss(head: nn.Module, z: Tensor, stats: Tensor, keys: Tensor, epochs: Tensor) -> Tensor:
    """MSE of ``head(z)`` against the features ``stats`` of each row's member's first
    checkpoint in the batch (:func:`first_checkpoint_rows`); rows without one are left out
    (none: 0, still a graph of the head)."""
    first = first_checkpoint_rows(keys, epochs)
    has = first >= 0
    pred = head(z[has])
    return F.mse_loss(pred, stats[first[has]]) if has.any() else pred.sum()


def sup_con(p: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss (Khosla et al., 2020; "L_out"): rows of ``p`` ``(N, P)``
    with equal ``labels`` ``(N,)`` are positives, every other row a negative.

    Each row's loss is the mean over its positives of ``-log softmax`` of the similarity, the
    mean taken over the rows that have a positive; a batch where none has one gives 0 (still
    a graph of ``p``). With two rows per label it is :func:`nt_xent`.
    """
    z = F.normalize(p, dim=-1)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = sim - sim.logsumexp(-1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(-1)
    has = n_pos > 0
    if not has.any():
        return p.sum() * 0.0
    per_row = log_prob.masked_fill(~pos, 0.0).sum(-1)[has] / n_pos[has]
    return -per_row.mean()


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


def check_loss_options(
    use: Any,
    n_outputs: int,
    weights: Sequence[float],
    *,
    functional_kind: str,
    contrastive_positives: str,
    detach_decoder: bool,
    field_hidden: Sequence[int],
) -> None:
    """The autoencoder's loss options, checked before anything is built: a one-line
    ``ConfigError`` naming the option. ``weights``: recon, contrastive, functional
    and field weights; ``use``: the :class:`~weightspace.autoencoder.options.FeatureUse`."""
    if functional_kind not in FUNCTIONAL_KINDS:
        raise ConfigError(f"functional_kind: '{functional_kind}' (choose mse or kl)")
    if functional_kind == "kl" and n_outputs < 2:
        raise ConfigError("functional_kind: kl needs class outputs; use mse for regression")
    if contrastive_positives not in CONTRASTIVE_POSITIVES:
        raise ConfigError(
            f"contrastive_positives: '{contrastive_positives}' (choose views or member)"
        )
    _, contrastive_weight, _, field_weight = weights
    if min(*weights, use.weight) < 0 or not any(weights):
        raise ConfigError(
            "recon_weight, contrastive_weight, functional_weight, field_weight, "
            "features.weight: must be >= 0, one of the first four > 0"
        )
    if detach_decoder and not any((contrastive_weight, field_weight, use.weight)):
        raise ConfigError(
            "detach_decoder: true leaves the encoder no loss; set field_weight, "
            "contrastive_weight or features.weight > 0"
        )
    if field_weight > 0 and not field_hidden:
        raise ConfigError("field_hidden: needs at least one hidden width")
    for name, w in (("weight", use.weight), ("origin", use.origin)):
        if use.input == "concat" and w > 0:
            raise ConfigError(
                f"features.{name}: must be 0 with features.input=concat (the features "
                "are latent coordinates already)"
            )
