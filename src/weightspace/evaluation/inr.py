"""The evaluation of an autoencoder on an INR zoo: signals, not accuracies.

Every member of an INR zoo fits its own signal (:class:`~weightspace.zoo.inr.SignalTask`:
coordinates in, values out) and carries its class, so what the classification path measures
by test accuracy is measured here by PSNR (``10 log10(peak² / MSE)``, peak the signal's value
range, as the zoo's ``psnr`` metric) on the task's coordinates:

- :data:`INR_TARGETS` / :func:`inr_probe_targets`: the probes predict the signal's class
  (``signal_class``: logistic and boosting, accuracy), the fit's ``psnr`` and the ``epoch``.
  The class is probed on each member's last checkpoint only: an initialization is a random
  network that has not seen its signal yet.
- :func:`inr_reconstruction_table`: decoded INRs of held-out members rendered on the
  coordinates; their PSNR against their own signal (``recon_psnr_*``) next to the
  originals' own (``orig_psnr_*``), and against the original INR's outputs
  (``psnr_vs_orig_*``); per-tensor R² as on the classification path.
- :func:`inr_generation`: a density fitted to the latents of the best-fitted training
  checkpoints (top fraction by PSNR), sampled and decoded; with no accuracy to report, each
  sample's PSNR against its nearest training signal (``sample_nearest_psnr_*``: is a sample
  a signal at all?), the decoded fitted points' PSNR against their own signals, and the
  samples' nearest-neighbour distances in weight space (:func:`generation_metrics`).
  The memorization audit scores accuracy: it is skipped (``audit_note``).
- :func:`signal_grid` / :func:`draw_signal_grid`: a few held-out signals as fitted, decoded
  and sampled (8x8 digits as images, MNIST-1D as curves), saved by
  :class:`~weightspace.evaluation.results.EvalResults` as ``signals.npz`` / ``signals.png``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation.probes import Split3
from weightspace.evaluation.reconstruction import epoch_groups, flat_r2, tensor_r2
from weightspace.evaluation.sampling import fit_latent_density, generation_metrics, top_fraction
from weightspace.evaluation.scores import quartiles
from weightspace.evaluation.splits import SplitData, probe_targets, to_params
from weightspace.nets.forward import forward_groups
from weightspace.nets.metrics import psnr
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.inr import SignalTask

INR_TARGETS = ("signal_class", "psnr", "epoch")
AUDIT_NOTE = "skipped: an INR zoo (the audit scores accuracy; see sample_nearest_psnr_*)"
GRID_ROWS = ("signal", "fitted", "field", "decoded", "sampled")  # the figure's rows, top to bottom
_BUDGET = 1 << 24  # activation entries per forward chunk


def is_inr(task: Any) -> bool:
    """Whether ``task`` is an INR task (every member fits its own signal)."""
    return isinstance(task, SignalTask)


def item_signals(datamodule: WeightDataModule, items: pd.DataFrame) -> np.ndarray:
    """(N,) the signal index each item (checkpoint) of ``items`` fits."""
    zoos = datamodule.full_dataset.zoos
    out = np.empty(len(items), dtype=np.int64)
    zi_all = items["zoo_index"].to_numpy(np.int64)
    mid = items["member_id"].to_numpy(np.int64)
    for zi in np.unique(zi_all):
        here = zi_all == zi
        out[here] = zoos[int(zi)].members["signal"].to_numpy(np.int64)[mid[here]]
    return out


def last_checkpoints(items: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the item is its member's last checkpoint in ``items``."""
    last = items.groupby(["zoo_index", "member_id"])["epoch"].transform("max")
    return (items["epoch"] == last).to_numpy()


def inr_probe_targets(
    items: Sequence[pd.DataFrame], names: Sequence[str] = INR_TARGETS
) -> tuple[dict[str, Split3], set[str]]:
    """:func:`~weightspace.evaluation.splits.probe_targets` of (train, val, test), with
    ``signal_class`` NaN (not probed) on every checkpoint but each member's last."""
    targets, categorical = probe_targets(items, names)
    if "signal_class" in targets:
        targets["signal_class"] = tuple(
            np.where(last_checkpoints(df), y.astype(np.float64), np.nan)
            for df, y in zip(items, targets["signal_class"])
        )
    return targets, categorical


# --------------------------------------------------------------------------- rendering
@torch.no_grad()
def render(
    params: Params,
    spec: MLPSpec | Sequence[MLPSpec],
    coords: Tensor,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(M, N, out) in ``dtype``: stacked networks ``(M, ...)`` (INRs, or any) evaluated on
    ``coords`` (N, in), in chunks of bounded size."""
    params = {k: v.to(dtype) for k, v in params.items()}
    coords = coords.to(dtype)
    m = next(iter(params.values())).shape[0]
    out = torch.empty(m, len(coords), spec_out(spec), dtype=dtype)
    for idx, y in forward_groups(params, coords, spec, _BUDGET):
        out[idx] = y
    return out


def spec_out(spec: MLPSpec | Sequence[MLPSpec]) -> int:
    return (spec if isinstance(spec, MLPSpec) else next(iter(spec))).widths[-1]


def signal_psnr(outputs: Tensor, targets: Tensor, peaks: Tensor) -> np.ndarray:
    """(M,) float64 PSNR of outputs (M, N, out) against targets (M, N, out), peaks (M,)."""
    mse = (outputs.double() - targets.double()).square().mean((1, 2))
    return psnr(mse, peaks).double().numpy()


def nearest_signal_psnr(outputs: Tensor, signals: Tensor, peaks: Tensor) -> np.ndarray:
    """(M,) each output's best PSNR over candidate signals (S, N, out) with peaks (S,)."""
    o = outputs.double().flatten(1)  # (M, N * out)
    s = signals.double().flatten(1)  # (S, N * out)
    mse = ((o**2).sum(1, keepdim=True) + (s**2).sum(1) - 2 * o @ s.T).clamp_min(0) / o.shape[1]
    return psnr(mse, peaks.double()[None, :].expand_as(mse)).double().amax(1).numpy()


# --------------------------------------------------------------------------- reconstruction
def inr_reconstruction_table(
    split: SplitData,
    decoded: Mapping[str, Tensor],
    datamodule: WeightDataModule,
    spec: MLPSpec,
    task: SignalTask,
) -> pd.DataFrame:
    """For each model's decoded normalized flat vectors ``(N, D)`` of ``split``: a row over all
    checkpoints, then (with several epochs) a row ``"<model> epoch <e>"`` per epoch, with
    ``n_networks``, ``r2/{tensor}``, ``r2_mean``, ``r2_normalized``, ``orig_loss`` /
    ``recon_loss`` (MSE against the signal), ``output_mse`` (decoded vs original outputs) and
    the quartiles ``orig_psnr_*``, ``recon_psnr_*`` (against the signal) and
    ``psnr_vs_orig_*`` (against the original INR's outputs, peak: the signal's range)."""
    sig = item_signals(datamodule, split.items)
    targets, peaks = task.member_targets(sig), task.peaks[torch.from_numpy(sig)]
    orig = render(split.params, split.specs, task.coords)  # (N, P, out)
    o_mse = (orig.double() - targets.double()).square().mean((1, 2)).numpy()
    o_psnr = signal_psnr(orig, targets, peaks)
    groups = epoch_groups(split)
    rows = {}
    for name, flat in decoded.items():
        params = to_params(flat, datamodule, spec)
        dec = render(params, split.specs, task.coords)
        d_mse = (dec.double() - targets.double()).square().mean((1, 2)).numpy()
        d_psnr = signal_psnr(dec, targets, peaks)
        vs_orig = signal_psnr(dec, orig, peaks)
        out_mse = (dec.double() - orig.double()).square().mean((1, 2)).numpy()
        for suffix, epoch, idx in groups:
            sel = torch.from_numpy(idx)
            per_tensor = tensor_r2(
                {k: v[sel] for k, v in split.params.items()},
                {k: v[sel] for k, v in params.items()},
                spec,
            )
            rows[name + suffix] = {
                "epoch": epoch,
                "n_networks": float(len(idx)),
                **{f"r2/{k}": v for k, v in per_tensor.items()},
                "r2_mean": float(np.mean(list(per_tensor.values()))),
                "orig_loss": float(o_mse[idx].mean()),
                "recon_loss": float(d_mse[idx].mean()),
                "output_mse": float(out_mse[idx].mean()),
                **quartiles(o_psnr[idx], "orig_psnr"),
                **quartiles(d_psnr[idx], "recon_psnr"),
                **quartiles(vs_orig[idx], "psnr_vs_orig"),
                "r2_normalized": flat_r2(split.weights[sel], flat[sel]),
            }
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- generation
def inr_generation(
    decode: Callable[[Tensor], Tensor],
    datamodule: WeightDataModule,
    train: SplitData,
    z_train: Tensor,
    task: SignalTask,
    kind: str,
    top: float,
    n_samples: int,
    seed: int,
) -> tuple[dict[str, Any], Tensor | None]:
    """Fit a ``kind`` density to the latents of the ``top`` fraction of training checkpoints
    by PSNR (those of their most common activation), decode ``n_samples`` samples and render
    them; returns the metrics (module docstring) and the samples' outputs ``(n, N, out)``."""
    fit_psnr = train.items["psnr"].to_numpy(np.float64)
    best = top_fraction(fit_psnr, top) if np.isfinite(fit_psnr).any() else np.arange(len(train))
    acts = np.array([train.specs[i].activation for i in best])
    values, counts = np.unique(acts, return_counts=True)
    activation = str(values[np.argmax(counts)])
    fit_idx = best[acts == activation]
    info: dict[str, Any] = {"density": kind, "top_fraction": top, "activation": activation}
    info |= {"n_fit": len(fit_idx), "audit_note": AUDIT_NOTE}
    if len(fit_idx) < 2:
        return {**info, "note": "fewer than 2 checkpoints to fit a density to"}, None
    dens = fit_latent_density(z_train[fit_idx].double().numpy(), kind)
    spec = MLPSpec(datamodule.spec.widths, activation, datamodule.spec.bias)
    samples = torch.from_numpy(dens.sample(n_samples, seed)).float()
    flat = decode(samples)
    out = render(to_params(flat, datamodule, spec), spec, task.coords)  # (n, N, out)
    sig = item_signals(datamodule, train.items)
    known = np.unique(sig)  # the training signals a sample may have copied
    near = nearest_signal_psnr(out, task.signals[known], task.peaks[known])
    refit = render(to_params(decode(z_train[fit_idx]), datamodule, spec), spec, task.coords)
    own = torch.from_numpy(sig[fit_idx])
    refit_psnr = signal_psnr(refit, task.signals[own], task.peaks[own])
    none = np.full(len(samples), np.nan)
    nn = generation_metrics(flat, train.weights, none, none, train.groups, seed=seed)
    nn = {k: v for k, v in nn.items() if not k.startswith(("sample_acc", "zoo_acc"))}
    return {
        **info,
        **nn,
        **quartiles(near, "sample_nearest_psnr"),
        **quartiles(fit_psnr[fit_idx], "fit_psnr"),
        **quartiles(refit_psnr, "decoded_fit_psnr"),
    }, out


# --------------------------------------------------------------------------- the figure
def signal_grid(
    split: SplitData,
    datamodule: WeightDataModule,
    task: SignalTask,
    original: Params,
    decoded_flat: Tensor,
    spec: MLPSpec,
    sampled: Tensor | None,
    field: Tensor | None = None,
    n: int = 10,
) -> dict[str, np.ndarray]:
    """Up to ``n`` held-out members (last checkpoints, one per class in class order first)
    as arrays for :func:`draw_signal_grid`: ``signal``, ``fitted``, ``decoded`` ``(k, N,
    out)``, ``field`` (the field decoder's rendering, from ``field`` ``(len(split), N, out)``;
    empty without one), ``sampled`` ``(j, N, out)`` (the first ``n`` samples), ``classes``
    ``(k,)``, ``coords`` ``(N, in)``; ``original`` are ``split``'s networks (its ``params``)."""
    last = np.flatnonzero(last_checkpoints(split.items))
    sig = item_signals(datamodule, split.items.iloc[last])
    cls = task.classes.numpy()[sig]
    firsts = [last[np.flatnonzero(cls == c)[0]] for c in np.unique(cls)]
    rest = [i for i in last if i not in set(firsts)]
    pick = np.array((firsts + rest)[:n], dtype=np.int64)
    sel = torch.from_numpy(pick)
    specs = [split.specs[i] for i in pick]
    own = item_signals(datamodule, split.items.iloc[pick])
    dec = to_params(decoded_flat[sel], datamodule, spec)
    empty = np.zeros((0, len(task.coords), task.output_dim), np.float32)
    return {
        "signal": task.signals[torch.from_numpy(own)].numpy(),
        "fitted": render({k: v[sel] for k, v in original.items()}, specs, task.coords).numpy(),
        "decoded": render(dec, specs, task.coords).numpy(),
        "field": empty if field is None else field[sel].numpy(),
        "sampled": empty if sampled is None else sampled[:n].numpy(),
        "classes": task.classes.numpy()[own],
        "coords": task.coords.numpy(),
    }


def field_psnr(
    split: SplitData, datamodule: WeightDataModule, task: SignalTask, field: Tensor
) -> dict[str, float]:
    """Quartiles ``field_psnr_*`` of the field decoder's renderings ``field`` ``(len(split),
    N, out)`` against each item's own signal: how much of the signal the latent carries."""
    sig = item_signals(datamodule, split.items)
    peaks = task.peaks[torch.from_numpy(sig)]
    return quartiles(signal_psnr(field, task.member_targets(sig), peaks), "field_psnr")


def draw_signal_grid(grid: Mapping[str, np.ndarray], title: str | None = None):
    """A figure of :func:`signal_grid`'s arrays: a row each for the signals, the INRs as
    fitted, the field decoder's renderings (when there are any), decoded and sampled; 2-D
    coordinates as images (row-major square grids), 1-D as curves. Returns ``(fig, axes)``."""
    import matplotlib.pyplot as plt

    rows = [r for r in GRID_ROWS if len(grid.get(r, ()))]  # (grids saved before "field")
    k = max(len(grid[r]) for r in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.3 * k, 1.4 * len(rows)), squeeze=False)
    coords = np.asarray(grid["coords"])
    image = coords.shape[1] == 2
    side = int(round(len(coords) ** 0.5))
    for r, row in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(grid[row]):
                ax.axis("off")
                continue
            y = np.asarray(grid[row][c])[:, 0]
            if image and side * side == len(y):
                ax.imshow(y.reshape(side, side), cmap="gray_r", vmin=0.0, vmax=1.0)
            else:
                ax.plot(coords[:, 0], y, lw=1)
            if row != "sampled" and c < len(grid["classes"]):
                ax.set_title(f"{row} ({int(grid['classes'][c])})", fontsize=7)
            else:
                ax.set_title(row, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig, axes
