"""The digits INR zoo: our generator against a plain batched-torch fit, side by side, one process.

    python benchmarks/bench_inr.py [--members 1797] [--repeats 3] [--threads N] [--no-generate]

Setting: the preset ``experiment=zoo/inr_digits`` (composed from ``conf/``): one SIREN 2-32-32-1
(sine, w0 = 30, SIREN init) per 8x8 digit image, 100 full-batch Adam steps (lr 0.01) over the
64 pixel coordinates.

(a) torch  the plain way: the members' weights stacked into six tensors, ``torch.bmm`` /
           ``baddbmm`` forward, autograd, ``torch.optim.Adam`` over the stacked tensors (the
           members' losses summed: Adam is elementwise, so each member gets its own update),
           the same initial weights and targets as ours;
(b) ours   ``weightspace.zoo.train.loop.train_population`` (the torch path with the hand-written
           backward: the fused kernel takes no per-member targets), evaluation at steps 0 and
           100 included;
(c) generate  the whole ``generate(cfg)`` of the preset into a temporary folder (task, training,
           writing, validation on open), once, with the PSNR distribution it reports.

Each repeat runs (a) then (b); the table gives medians over repeats and the ratio. PSNR is
10 log10(range^2 / MSE) with the signal's value range as peak. The machine may be shared, so
trust the ratio (measured side by side) more than absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from weightspace.config import CONF_DIR
from weightspace.nets.metrics import psnr
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.generate import generate
from weightspace.zoo.init import init_population
from weightspace.zoo.inr import assign_signals
from weightspace.zoo.population import sample_population
from weightspace.zoo.tasks import load_task
from weightspace.zoo.train.loop import train_population


def preset(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("generate", overrides=["experiment=zoo/inr_digits", *overrides])


def plain_torch(params0, coords, targets, spec: MLPSpec, lr: float, steps: int):
    """(seconds, final PSNR (M,)): full-batch Adam over stacked tensors, autograd."""
    names = list(params0)
    leaves = [params0[k].clone().requires_grad_(True) for k in names]
    opt = torch.optim.Adam(leaves, lr=lr)
    peak = targets.flatten(1).amax(1) - targets.flatten(1).amin(1)
    x = coords.expand(len(targets), -1, -1)  # (M, N, in)

    def out() -> torch.Tensor:
        h = x
        for l in range(spec.n_layers):
            w, b = leaves[2 * l], leaves[2 * l + 1]  # (M, out, in), (M, out)
            h = torch.baddbmm(b.unsqueeze(1), h, w.mT)
            if l < spec.n_layers - 1:
                h = torch.sin(h)
        return h  # (M, N, out)

    t0 = time.perf_counter()
    for _ in range(steps):
        loss = ((out() - targets) ** 2).mean((1, 2))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        mse = ((out() - targets) ** 2).mean((1, 2))
    return seconds, psnr(mse, peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=1797)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-generate", action="store_true", help="skip (c)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = preset(f"zoo.size={args.members}", f"zoo.shard_size={args.members}")
    task = load_task(cfg.task)
    spec = MLPSpec(tuple(cfg.model.widths), "sine")
    hp = cfg.zoo.hparams
    members = assign_signals(sample_population(hp, args.members, int(cfg.zoo.seed)), task)
    steps, lr = int(hp.epochs), float(hp.lr)
    init = init_population(spec, members)  # (a) starts where (b) starts
    targets = task.member_targets(members["signal"].to_numpy())
    print(
        f"{args.members} SIRENs {list(spec.widths)} on inr_digits, {steps} full-batch Adam "
        f"steps (lr {lr}), {torch.get_num_threads()} threads"
    )

    times = {"torch": [], "ours": []}
    for r in range(args.repeats):
        sec, p_torch = plain_torch(init, task.coords, targets, spec, lr, steps)
        times["torch"].append(sec)
        t0 = time.perf_counter()
        result = train_population(task, spec, members, [])
        times["ours"].append(time.perf_counter() - t0)
        p_ours = result.metrics.query(f"epoch == {steps}")["psnr"].to_numpy()
        print(f"  repeat {r + 1}: torch {sec:.1f} s, ours {times['ours'][-1]:.1f} s")

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'method':<8} {'median s':>9} {'members/s':>10} {'PSNR min':>9} {'PSNR median':>12}")
    for name, p in (("torch", p_torch.numpy()), ("ours", p_ours)):
        rate = args.members / med[name]
        print(
            f"{name:<8} {med[name]:>9.1f} {rate:>10.1f} "
            f"{float(p.min()):>9.1f} {float(torch.tensor(p).median()):>12.1f}"
        )
    print(f"ours / torch speed: {med['torch'] / med['ours']:.1f}x")

    if not args.no_generate:
        with tempfile.TemporaryDirectory() as root:
            c = preset(
                f"zoo.size={args.members}",
                f"zoo.shard_size={args.members}",
                f"paths.root_dir={root}",
                "progress=false",
            )
            t0 = time.perf_counter()
            summary = generate(c)
            print(f"\ngenerate (whole command, zoo written): {time.perf_counter() - t0:.1f} s")
            print(summary)


if __name__ == "__main__":
    main()
