"""Reconstruction: decoded networks run on the task, next to the originals they stand for.

- :func:`evaluate_networks`: test loss and accuracy of stacked networks ``(M, ...)``;
- :func:`reconstruction_metrics`: per-tensor R² (:func:`tensor_r2`), accuracies, their
  retention and rank agreement, the agreement of predicted labels, the output MSE;
- :func:`reconstruction_table`: those metrics for each model's decoded test split (the
  autoencoder, the PCA of the same width), overall and per checkpoint epoch.

Networks run through the reference forward (:func:`weightspace.nets.forward.forward_groups`,
each activation's members with their own spec) in float32, in chunks of members that keep the
widest activation ``(m, B, width)`` within a budget of entries; the whole test set is one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation.scores import as_2d, kendall, nanmean, r2
from weightspace.evaluation.splits import SplitData, to_params
from weightspace.nets.forward import effective_params, forward_groups
from weightspace.nets.metrics import per_example_loss
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.tasks import Task


def _n_members(params: Mapping[str, Tensor]) -> int:
    return next(iter(params.values())).shape[0]


def _outputs(
    params: Mapping[str, Tensor], spec: MLPSpec | Sequence[MLPSpec], x: Tensor, budget: int
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """(member indices, outputs (m, B, out)) in float32, in the chunks of
    :func:`~weightspace.nets.forward.forward_groups` (within ``budget`` entries)."""
    params = {k: v.float() for k, v in params.items()}
    for idx, out in forward_groups(params, x, spec, budget):
        yield idx.numpy(), out


@torch.no_grad()
def evaluate_networks(
    params: Mapping[str, Tensor],
    spec: MLPSpec | Sequence[MLPSpec],
    task: Task,
    budget: int = 1 << 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Test loss and accuracy (NaN for regression) of stacked networks, each ``(M,)``;
    ``spec``: one for all or one per network (mixed activations)."""
    m = _n_members(params)
    loss, acc = np.full(m, np.nan), np.full(m, np.nan)
    for idx, out in _outputs(params, spec, task.x_test, budget):
        loss[idx] = per_example_loss(out, task.y_test, task).double().mean(1).numpy()
        if task.is_classification:
            acc[idx] = (out.argmax(-1) == task.y_test).double().mean(1).numpy()
    return loss, acc


def tensor_r2(original: Mapping[str, Tensor], decoded: Mapping[str, Tensor], spec: MLPSpec):
    """R² of each effective tensor over the networks: ``1 - SSE / SST``, SST around the
    per-entry mean of the originals (decoding every network to the mean network scores 0).
    Both are pooled over the tensor's entries. An SST of 0 gives 1 if SSE is 0, else NaN."""
    a, b = effective_params(original, spec), effective_params(decoded, spec)
    return {name: r2(a[name].double(), b[name].double()) for name in spec.param_shapes()}


def reconstruction_metrics(
    original_params: Mapping[str, Tensor],
    decoded_params: Mapping[str, Tensor],
    spec: MLPSpec | Sequence[MLPSpec],
    task: Task,
    budget: int = 1 << 24,
) -> dict[str, float]:
    """How well decoded networks stand in for the originals (both stacked, ``(M, ...)``).

    ``spec``: one for all networks or one per network (a zoo with mixed activations).

    - ``r2/{tensor}`` per weight and bias (:func:`tensor_r2`), ``r2_mean`` their mean;
    - ``orig_acc`` / ``recon_acc``: mean test accuracy of the originals and the decoded;
      ``orig_loss`` / ``recon_loss`` the same for the loss;
    - ``acc_retention``: mean over networks of ``recon_acc / orig_acc``;
      ``acc_retention_of_means``: ``mean recon_acc / mean orig_acc``;
    - ``acc_kendall_tau``: rank agreement of the accuracies across networks;
    - ``agreement``: mean fraction of test inputs where both predict the same class;
    - ``output_mse``: mean squared difference of their outputs (logits / predictions).

    Accuracy-based entries are NaN for regression tasks. Networks run in chunks of at most
    ``budget`` activation entries.
    """
    m = _n_members(original_params)
    if _n_members(decoded_params) != m:
        raise ValueError(f"{m} original and {_n_members(decoded_params)} decoded networks")
    one = spec if isinstance(spec, MLPSpec) else next(iter(spec))
    per_tensor = tensor_r2(original_params, decoded_params, one)
    x, y = task.x_test, task.y_test
    o_loss, d_loss, o_acc, d_acc, agree, mse = (np.full(m, np.nan) for _ in range(6))
    pairs = zip(
        _outputs(original_params, spec, x, budget), _outputs(decoded_params, spec, x, budget)
    )
    with torch.no_grad():
        for (idx, a), (_, b) in pairs:  # a, b: (m, B, out) of the same networks
            o_loss[idx] = per_example_loss(a, y, task).double().mean(1).numpy()
            d_loss[idx] = per_example_loss(b, y, task).double().mean(1).numpy()
            mse[idx] = ((a - b) ** 2).double().mean((1, 2)).numpy()
            if task.is_classification:
                pa, pb = a.argmax(-1), b.argmax(-1)
                o_acc[idx] = (pa == y).double().mean(1).numpy()
                d_acc[idx] = (pb == y).double().mean(1).numpy()
                agree[idx] = (pa == pb).double().mean(1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(o_acc > 0, d_acc / o_acc, np.nan)
    cls = task.is_classification
    return {
        "n_networks": float(m),
        **{f"r2/{k}": v for k, v in per_tensor.items()},
        "r2_mean": float(np.mean(list(per_tensor.values()))),
        "orig_loss": float(o_loss.mean()),
        "recon_loss": float(d_loss.mean()),
        "orig_acc": float(o_acc.mean()) if cls else float("nan"),
        "recon_acc": float(d_acc.mean()) if cls else float("nan"),
        "acc_retention": nanmean(ratio) if cls else float("nan"),
        "acc_retention_of_means": float(d_acc.mean() / o_acc.mean())
        if cls and o_acc.mean() > 0
        else float("nan"),
        "acc_kendall_tau": kendall(o_acc, d_acc) if cls else float("nan"),
        "agreement": float(agree.mean()) if cls else float("nan"),
        "output_mse": float(mse.mean()),
    }


def flat_r2(x: np.ndarray | Tensor, x_hat: np.ndarray | Tensor) -> float:
    """R² of reconstructed vectors (N, D) pooled over entries, SST around the per-entry mean:
    the usual score of an autoencoder (or a PCA) in the normalized space."""
    return r2(as_2d(x), as_2d(x_hat))


def epoch_groups(split: SplitData) -> list[tuple[str, float, np.ndarray]]:
    """``(row suffix, epoch, item indices)``: all items (suffix "", epoch NaN), then, when the
    split holds several checkpoint epochs, each epoch's items (suffix " epoch <e>")."""
    epochs = split.items["epoch"].to_numpy() if "epoch" in split.items else np.zeros(len(split))
    groups: list[tuple[str, float, np.ndarray]] = [("", float("nan"), np.arange(len(split)))]
    if len(np.unique(epochs)) > 1:
        groups += [
            (f" epoch {e}", float(e), np.flatnonzero(epochs == e)) for e in np.unique(epochs)
        ]
    return groups


def reconstruction_table(
    split: SplitData,
    decoded: Mapping[str, Tensor],
    datamodule: WeightDataModule,
    spec: MLPSpec,
    task: Task,
) -> pd.DataFrame:
    """:func:`reconstruction_metrics` (plus ``r2_normalized``) of each model's decoded
    normalized flat vectors against ``split``: a row per model over all checkpoints, then,
    when the split holds several checkpoint epochs, a row ``"<model> epoch <e>"`` per epoch
    (column ``epoch``; NaN on the overall rows). Initializations (epoch 0) are random
    networks no latent of a few dozen numbers can carry, and partly trained ones are rough:
    the per-epoch rows keep the overall mean from hiding how well trained networks decode."""
    groups = epoch_groups(split)
    rows = {}
    for name, flat in decoded.items():
        params = to_params(flat, datamodule, spec)
        for suffix, epoch, idx in groups:
            sel = torch.from_numpy(idx)
            row = reconstruction_metrics(
                {k: v[sel] for k, v in split.params.items()},
                {k: v[sel] for k, v in params.items()},
                [split.specs[i] for i in idx],
                task,
            )
            row["r2_normalized"] = flat_r2(split.weights[sel], flat[sel])
            rows[name + suffix] = {"epoch": epoch, **row}
    return pd.DataFrame.from_dict(rows, orient="index")
