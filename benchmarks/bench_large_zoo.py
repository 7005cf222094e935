"""Large zoos stream through an autoencoder epoch in bounded memory.

    .venv/bin/python benchmarks/bench_large_zoo.py                  # 10k, 30k, 100k members
    .venv/bin/python benchmarks/bench_large_zoo.py --sizes 1000 5000 --root /tmp/bench
    .venv/bin/python benchmarks/bench_large_zoo.py --encoder graph       # conf/encoder/graph.yaml

For each size, a zoo of N members x 2 checkpoints (epochs 0 and 1) of a [64, 16, 10] MLP on
digits, then one training epoch of the MLP autoencoder over it (``WeightDataModule`` +
``WeightAutoencoder`` + a Lightning ``Trainer``, batch 512, validation off) in a fresh
process, which reports its peak memory:

- ``VmHWM``: peak resident set, everything counted — including the zoo's pages that the
  memory maps have touched (file-backed, clean: the kernel drops them under pressure);
- ``RssAnon``: the process's own memory (heap, tensors, tables): after ``setup`` (tables,
  split, normalizer fitted in one streamed pass), and sampled every 10 training batches —
  its maximum, and its growth from the first batch to the end of the epoch.

**The zoos are synthesized**, not trained: training 100,000 members takes about half an hour
on 2 shared cores (~60 members/s measured), so the script trains a 256-member template zoo
for real and writes larger zoos in the same format with ``ZooWriter`` — members, metrics and
hyperparameters cycled from the template, weights the template's plus 1% noise. Reading does
not care how the weights were made. Zoos go under ``--root`` (default:
``$WEIGHTSPACE_ROOT/bench-large-zoo``, else a temporary folder) and are reused when present.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN = 16
TEMPLATE = 256
SHARD_SIZE = 4096


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, in MiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


# --------------------------------------------------------------------------- zoos
def make_template(root: Path) -> Path:
    from hydra import compose, initialize_config_dir

    from weightspace.config import CONF_DIR
    from weightspace.zoo.generate import generate
    from weightspace.zoo.store import MANIFEST

    path = root / "zoos" / "large-template"
    if (path / MANIFEST).exists():
        return path
    overrides = [
        f"paths.root_dir={root}",
        "progress=false",
        "zoo.name=large-template",
        f"zoo.size={TEMPLATE}",
        f"zoo.shard_size={TEMPLATE}",
        f"model.hidden=[{HIDDEN}]",
        "zoo.checkpoints=[0,1]",
        "zoo.hparams.epochs=1",
        "zoo.hparams.lr=[0.02,0.05,0.1,0.2]",
        "zoo.hparams.init=[kaiming,xavier]",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return generate(compose("generate", overrides=overrides)).path


def synthesize(template: Path, n: int, path: Path) -> Path:
    """A zoo of ``n`` members in the zoo format, cycled from ``template`` plus 1% noise."""
    import torch

    from weightspace.zoo.store import MANIFEST, Zoo
    from weightspace.zoo.writer import ZooWriter

    if (path / MANIFEST).exists() and Zoo.open(path).manifest["n_members"] == n:
        return path
    src = Zoo.open(template)
    base = np.arange(n) % len(src)
    members = src.members.iloc[base].drop(columns=["diverged", "diverged_epoch"])
    members = members.reset_index(drop=True).assign(
        member_id=np.arange(n),
        seed=np.arange(n),
        shard=np.arange(n) // SHARD_SIZE,
        shard_row=np.arange(n) % SHARD_SIZE,
    )
    epochs = src.epochs
    stacked = {e: src.weights(e) for e in epochs}  # {epoch: {name: (TEMPLATE, ...)}}
    metrics = src.metrics.drop(columns=["diverged"], errors="ignore")
    writer = ZooWriter(
        path, (template / "config.yaml").read_text(), f"synthetic-{n}", overwrite=True
    )
    n_shards = int(members["shard"].max()) + 1
    writer.write_plan(n_shards)
    gen = torch.Generator().manual_seed(n)
    for s in range(n_shards):
        ids = np.arange(s * SHARD_SIZE, min(n, (s + 1) * SHARD_SIZE))
        rows = torch.from_numpy(base[ids])
        weights = {}
        for name in stacked[epochs[0]]:
            w = torch.stack([stacked[e][name][rows] for e in epochs], dim=1)  # (m, E, ...)
            weights[name] = w + 0.01 * w.std() * torch.randn(w.shape, generator=gen)
        met = metrics.set_index("member_id").loc[base[ids]].reset_index()
        met["member_id"] = np.repeat(ids, len(epochs))
        writer.write_shard(s, ids, epochs, weights, met, np.full(len(ids), -1))
    drop = {"schema_version", "weightspace_version", "fingerprint", "files"}
    drop |= {"n_members", "n_shards", "n_diverged"}
    manifest = {k: v for k, v in src.manifest.items() if k not in drop}
    writer.finalize(members, manifest)
    return path


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# --------------------------------------------------------------------------- one epoch
def part_config(part: str, kind: str, **changes) -> dict:
    """``conf/<part>/<kind>.yaml`` as the model takes it (``_target_`` and options), changed."""
    from omegaconf import OmegaConf

    from weightspace.config import CONF_DIR

    return {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / part / f"{kind}.yaml")), **changes}


def stream(path: str, batch_size: int, encoder: str = "mlp") -> dict[str, float]:
    """One training epoch over the zoo at ``path``; peak memory and time (in this process)."""
    import pytorch_lightning as pl
    import torch

    from weightspace.autoencoder import WeightAutoencoder
    from weightspace.data.datamodule import WeightDataModule

    torch.set_num_threads(1)
    start = proc_status()
    peak_anon = [start["RssAnon"]]
    in_epoch: list[float] = []  # RssAnon after batches 0, 10, 20, ...

    class Sample(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx % 10 == 0:
                in_epoch.append(proc_status()["RssAnon"])

    t0 = time.perf_counter()
    dm = WeightDataModule(path, batch_size=batch_size, seed=0)
    dm.setup()  # tables, split, normalizer fitted on train (one streamed pass)
    t_setup = time.perf_counter() - t0
    after_setup = proc_status()["RssAnon"]
    model = WeightAutoencoder.from_datamodule(
        dm,
        n_probe=64,
        # the mlp keeps this benchmark's historical [256] hidden layer: numbers comparable
        encoder=part_config("encoder", encoder, **({"hidden": [256]} if encoder == "mlp" else {})),
        decoder=part_config("decoder", "mlp"),
    )
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Sample()],
    )
    t1 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    t_epoch = time.perf_counter() - t1
    end = proc_status()
    return {
        "items": len(dm.dataset("train")),
        "setup_s": t_setup,
        "epoch_s": t_epoch,
        "rss_after_imports_mib": start["VmRSS"],
        "peak_rss_mib": end["VmHWM"],
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_after_setup_mib": after_setup,
        "anon_first_batch_mib": in_epoch[0],
        "peak_anon_mib": max([*peak_anon, after_setup, *in_epoch]),
        "epoch_growth_mib": max(in_epoch) - in_epoch[0],
        "file_backed_end_mib": end["RssFile"],
    }


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--encoder", choices=["mlp", "graph", "nfn"], default="mlp")
    parser.add_argument("--stream", help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.stream:
        print(json.dumps(stream(args.stream, args.batch_size, args.encoder)))
        return

    env_root = os.environ.get("WEIGHTSPACE_ROOT")
    root = args.root or (Path(env_root) / "bench-large-zoo" if env_root else None)
    root = root or Path(tempfile.mkdtemp(prefix="bench-large-zoo-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"zoos under {root}", flush=True)
    template = make_template(root)
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        path = synthesize(template, n, root / "zoos" / f"large-{n}")
        made = time.perf_counter() - t0
        child = subprocess.run(
            [
                *(sys.executable, __file__, "--stream", str(path)),
                *("--batch-size", str(args.batch_size), "--encoder", args.encoder),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"},
        )
        if child.returncode != 0:
            sys.exit(child.stderr[-3000:])
        r = json.loads(child.stdout.strip().splitlines()[-1])
        r.update(members=n, disk_mib=disk_mib(path), synth_s=made)
        rows.append(r)
        print(json.dumps(r), flush=True)

    print()
    print(
        "| members | checkpoints | zoo on disk (MiB) | train items | epoch (s) | items/s "
        "| peak RSS (MiB) | anonymous after setup | peak anonymous | growth during epoch |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['members']:,} | {2 * r['members']:,} | {r['disk_mib']:.0f} | {r['items']:,} "
            f"| {r['epoch_s']:.1f} | {r['items'] / r['epoch_s']:,.0f} | {r['peak_rss_mib']:.0f} "
            f"| {r['anon_after_setup_mib']:.0f} | {r['peak_anon_mib']:.0f} "
            f"| {r['epoch_growth_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
