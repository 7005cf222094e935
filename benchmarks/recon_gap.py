"""Why decoded networks disagree with their originals: label agreement on training and held-out
members, and how fragile the originals' labels are to noise in their weights.

    python benchmarks/recon_gap.py RUN [RUN ...] [--fragility] [--json OUT]

For each autoencoder run folder (``scripts/train_autoencoder.py``'s ``run_dir``), on the final
checkpoints of its training and test members (``--checkpoint``, default the run's best;
classification zoos):

- ``acc retained`` (mean decoded test accuracy / mean original, the evaluation's
  ``acc_retention_of_means``, the docs' "acc retained") and ``agreement`` (fraction of test
  inputs where the decoded network predicts the original's label), each on train and test
  members: a gap between the two is generalization, a low train value is capacity or
  optimization; also split over the inputs the original classifies right / wrong (where
  agreeing means repeating its mistake);
- ``rel. error``: the decoded weights' error, ``||decoded - original|| / ||original||`` over
  all tensors of a network (median over networks), in the frame the run reads (MergeMany).

``--fragility`` adds, for the first run's test members (final checkpoints):

- agreement of each original with itself plus Gaussian noise, per tensor, of ``k`` times the
  decoded network's own error on that tensor (``--levels``; ``k = 1``: isotropic noise as
  large as the decoder's error), and of ``eps`` times the tensor's RMS (``--relative``: a
  scale that compares zoos);
- the floor: agreement of each member with the member of the zoo whose hyperparameters are
  closest (same init scheme; nearest in log lr, log weight decay, log init scale), and with a
  random other member, with their distance in weight space (relative, as the error above).

Agreements are means over networks (as the evaluation's), weight errors medians; one
process, ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.autoencoder.run import Run, load_run
from weightspace.evaluation.splits import SplitData, load_split, to_params
from weightspace.nets.forward import forward_groups
from weightspace.nets.spec import MLPSpec, Params

BUDGET = 1 << 24  # activation entries per forward chunk
HPARAMS = ("lr", "weight_decay", "init_scale")  # compared on a log scale


# --------------------------------------------------------------------------- measures
@torch.no_grad()
def predictions(params: Params, specs: MLPSpec | Sequence[MLPSpec], x: Tensor) -> Tensor:
    """Predicted classes ``(M, B)`` of stacked networks ``{name: (M, ...)}`` on ``x (B, d)``."""
    m = next(iter(params.values())).shape[0]
    out = torch.empty(m, len(x), dtype=torch.long)
    params = {k: v.float() for k, v in params.items()}
    for idx, logits in forward_groups(params, x, specs, BUDGET):  # (m, B, classes)
        out[idx] = logits.argmax(-1)
    return out


def agreement(a: Tensor, b: Tensor) -> np.ndarray:
    """Per-network fraction of inputs where predictions ``a``, ``b`` ``(M, B)`` agree ``(M,)``."""
    return (a == b).double().mean(1).numpy()


def accuracy(pred: Tensor, y: Tensor) -> np.ndarray:
    return (pred == y).double().mean(1).numpy()


def split_agreement(a: Tensor, b: Tensor, y: Tensor) -> tuple[float, float]:
    """Agreement of ``b`` with ``a`` ``(M, B)`` pooled over the inputs ``a`` classifies right,
    and over those it gets wrong (where agreeing means making the same mistake)."""
    right, same = a == y, a == b
    n_right, n_wrong = int(right.sum()), int((~right).sum())
    on_right = float((same & right).sum()) / n_right if n_right else float("nan")
    on_wrong = float((same & ~right).sum()) / n_wrong if n_wrong else float("nan")
    return on_right, on_wrong


def relative_error(original: Params, decoded: Params) -> np.ndarray:
    """``||decoded - original|| / ||original||`` per network ``(M,)``, over all tensors."""
    num = sum(((decoded[k] - v).double() ** 2).flatten(1).sum(1) for k, v in original.items())
    den = sum((v.double() ** 2).flatten(1).sum(1) for v in original.values())
    return (num / den).sqrt().numpy()


def tensor_rms(params: Params) -> dict[str, Tensor]:
    """Per-network RMS of each tensor ``{name: (M,)}``."""
    return {k: (v.double() ** 2).flatten(1).mean(1).sqrt() for k, v in params.items()}


def add_noise(params: Params, sigma: Mapping[str, Tensor], gen: torch.Generator) -> Params:
    """``params`` plus i.i.d. Gaussian noise of std ``sigma[name]`` ``(M,)`` per network."""
    out = {}
    for k, v in params.items():
        s = sigma[k].to(v.dtype).reshape(-1, *([1] * (v.dim() - 1)))  # (M, 1, ...)
        out[k] = v + s * torch.randn(v.shape, generator=gen, dtype=v.dtype)
    return out


def nearest_members(items: pd.DataFrame) -> np.ndarray:
    """For each row, the index of the other row with the same ``init`` whose hyperparameters
    (:data:`HPARAMS`, log scale, standardized over the rows) are closest; -1 if none."""
    h = np.log(items[list(HPARAMS)].to_numpy(np.float64))
    h = (h - h.mean(0)) / np.where(h.std(0) > 0, h.std(0), 1.0)
    init = items["init"].to_numpy()
    d = ((h[:, None] - h[None]) ** 2).sum(-1)  # (N, N)
    d[init[:, None] != init[None]] = np.inf
    np.fill_diagonal(d, np.inf)
    best = d.argmin(1)
    return np.where(np.isfinite(d[np.arange(len(d)), best]), best, -1)


# --------------------------------------------------------------------------- a run's members
def final(split: SplitData) -> SplitData:
    """The split's final checkpoints only."""
    last = split.items["epoch"].max()
    idx = np.flatnonzero(split.items["epoch"].to_numpy() == last)
    sel = torch.from_numpy(idx)
    return SplitData(
        {k: v[sel] for k, v in split.params.items()},
        split.weights[sel],
        split.items.iloc[idx].reset_index(drop=True),
        [split.specs[i] for i in idx],
        split.groups[idx],
    )


@torch.no_grad()
def decoded(run: Run, split: SplitData, batch: int = 512) -> Params:
    """The run's reconstruction of ``split``'s networks (denormalized)."""
    model = run.model.eval()
    flat = torch.cat(
        [model(split.weights[s : s + batch].float()) for s in range(0, len(split), batch)]
    )
    return to_params(flat, run.datamodule, run.datamodule.spec)


def reconstruction(run: Run, split_name: str) -> dict[str, float]:
    """Acc retained, agreement and relative weight error of the final checkpoints of one split."""
    split = final(load_split(run.datamodule, split_name))
    task = run.datamodule.task
    params = decoded(run, split)
    orig = predictions(split.params, split.specs, task.x_test)
    dec = predictions(params, split.specs, task.x_test)
    acc_o, acc_d = accuracy(orig, task.y_test), accuracy(dec, task.y_test)
    on_right, on_wrong = split_agreement(orig, dec, task.y_test)
    return {
        "n": len(split),
        "acc_retained": float(acc_d.mean() / acc_o.mean()),  # the docs' "acc retained"
        "agreement": float(agreement(orig, dec).mean()),
        "rel_error": float(np.median(relative_error(split.params, params))),
        "agreement_where_right": on_right,
        "agreement_where_wrong": on_wrong,
    }


def fragility(
    run: Run, levels: Sequence[float], relative: Sequence[float], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Agreement of the test members' final checkpoints with noisy copies of themselves (noise
    ``k`` x the decoder's error per tensor, or ``eps`` x the tensor's RMS), and the floor of
    nearest-hyperparameter and random pairs (see the module docs). Means over networks."""
    dm, task = run.datamodule, run.datamodule.task
    split = final(load_split(dm, "test"))
    dec = decoded(run, split)
    orig = predictions(split.params, split.specs, task.x_test)
    err = {k: tensor_rms({k: dec[k] - v})[k] for k, v in split.params.items()}  # {name: (M,)}
    rms = tensor_rms(split.params)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {"decoded": {}, "relative": {}, "pairs": {}}
    out["decoded"]["decoder"] = float(
        np.mean(agreement(orig, predictions(dec, split.specs, task.x_test)))
    )
    for k in levels:
        noisy = add_noise(split.params, {n: k * e for n, e in err.items()}, gen)
        out["decoded"][f"{k:g}"] = float(
            np.mean(agreement(orig, predictions(noisy, split.specs, task.x_test)))
        )
    for eps in relative:
        noisy = add_noise(split.params, {n: eps * r for n, r in rms.items()}, gen)
        out["relative"][f"{eps:g}"] = float(
            np.mean(agreement(orig, predictions(noisy, split.specs, task.x_test)))
        )
    out["relative"]["decoder_rel_error"] = float(np.median(relative_error(split.params, dec)))
    # Floor: other members of the whole zoo (all splits, final checkpoints).
    parts = [final(load_split(dm, s)) for s in ("train", "val", "test")]
    items = pd.concat([p.items for p in parts], ignore_index=True)
    members = pd.DataFrame(run.datamodule.full_dataset.zoos[0].members).set_index("member_id")
    hp = members.loc[items["member_id"].to_numpy(), ["init", *HPARAMS]].reset_index(drop=True)
    pred = torch.cat([predictions(p.params, p.specs, task.x_test) for p in parts])
    test = np.arange(len(items) - len(split), len(items))  # the test split's rows
    near = nearest_members(hp)[test]
    ok = near >= 0
    rng = np.random.default_rng(seed)
    other = (test + rng.integers(1, len(items), len(test))) % len(items)
    params = {k: torch.cat([p.params[k] for p in parts]) for k in split.params}
    for name, a, b in (("nearest_hparams", test[ok], near[ok]), ("random", test, other)):
        out["pairs"][name] = float(np.mean(agreement(pred[a], pred[b])))
        pa, pb = ({k: v[torch.from_numpy(i)] for k, v in params.items()} for i in (a, b))
        out["pairs"][f"{name}_rel_distance"] = float(np.median(relative_error(pa, pb)))
    out["pairs"]["orig_acc"] = float(np.mean(accuracy(orig, task.y_test)))
    return out


# --------------------------------------------------------------------------- entry point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="autoencoder run folders")
    ap.add_argument("--checkpoint", default="best", help="best | last | a file name")
    ap.add_argument("--fragility", action="store_true", help="noise and pair floors (first run)")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--relative", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    report: dict[str, dict] = {}
    print(
        "| run | split | n | acc retained | label agreement | where the original is right "
        "/ wrong | rel. weight error |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for path in args.runs:
        run = load_run(path, args.checkpoint)
        report[path] = {s: reconstruction(run, s) for s in ("train", "test")}
        for s, r in report[path].items():
            print(
                f"| {path} | {s} | {r['n']} | {r['acc_retained']:.1%} | {r['agreement']:.1%} "
                f"| {r['agreement_where_right']:.1%} / {r['agreement_where_wrong']:.1%} "
                f"| {r['rel_error']:.3f} |"
            )
    if args.fragility:
        frag = fragility(load_run(args.runs[0], args.checkpoint), args.levels, args.relative)
        report[args.runs[0]]["fragility"] = frag
        for kind, row in frag.items():
            print(f"{kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
