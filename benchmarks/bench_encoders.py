"""Encoder throughput: networks per second, forward + backward, for every encoder kind.

    python benchmarks/bench_encoders.py [--widths 64 32 32 10] [--batch 64] [--latent 8]
                                        [--repeats 15] [--threads 1] [--clock cpu|wall]
                                        [--kinds mlp graph] [--variant nfn:gram=16 ...]

One row per ``conf/encoder/<kind>.yaml`` found (its options as the config sets them), each
built into a :class:`~weightspace.autoencoder.WeightAutoencoder` of the demo's architecture
with the MLP decoder, all on the same batch of ``--batch`` random relu networks:

- ``encoder``: what the encoder costs, input preparation included (the probe encoder's
  forward pass of the networks on the probe inputs, the graph encoder's canonicalization):
  :meth:`~weightspace.autoencoder.WeightAutoencoder.encode_learned`, then a backward pass;
- ``train step``: a whole optimizer step of the model (reconstruction + functional KL on
  256 probe inputs, MLP decoder, AdamW), without the invariant features;
- ``demo step``: the same with the demo's latent (``experiment=autoencoder/demo``: the
  8 learned numbers followed by the 171 invariant features, spectra, products and function
  features computed on the batch): what an epoch of the demo costs per network, data loading
  aside.

``--variant KIND:KEY=VALUE[,KEY=VALUE]`` adds a row: that kind's config with those options
changed (e.g. ``nfn:gram=16``, the angle readout), named ``KIND KEY=VALUE``.

Medians over ``--repeats`` (kinds interleaved), and each kind's time relative to the MLP
encoder's (``x mlp``), as a markdown table. ``--clock cpu`` (the default) times the
process's CPU time, which other jobs on a shared machine do not inflate (with one thread it
is the wall time of an idle machine); ``--clock wall`` the elapsed time. Kinds whose config
cannot be built are listed with the error.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from weightspace.autoencoder import WeightAutoencoder
from weightspace.autoencoder.options import DEFAULT_DECODER, FeatureUse
from weightspace.config import CONF_DIR
from weightspace.nets.layout import flatten_params
from weightspace.nets.spec import MLPSpec


def encoder_configs(kinds: list[str] | None) -> dict[str, dict]:
    """``{kind: config}`` of ``conf/encoder/*.yaml``, mlp first."""
    paths = sorted(Path(CONF_DIR, "encoder").glob("*.yaml"), key=lambda p: (p.stem != "mlp", p))
    configs = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in paths}
    return {k: c for k, c in configs.items() if kinds is None or k in kinds}


def variant_configs(configs: dict[str, dict], variants: list[str]) -> dict[str, dict]:
    """``{"KIND KEY=VALUE": config}`` for each ``KIND:KEY=VALUE[,KEY=VALUE]`` (values YAML)."""
    out = {}
    for v in variants:
        kind, _, sets = v.partition(":")
        if kind not in configs or not sets:
            raise SystemExit(f"--variant {v}: expected KIND:KEY=VALUE with KIND in {list(configs)}")
        config = dict(configs[kind])
        for item in sets.split(","):
            key, _, value = item.partition("=")
            config[key] = yaml.safe_load(value)
        out[f"{kind} {sets.replace(',', ' ')}"] = config
    return out


def random_networks(spec: MLPSpec, n: int, seed: int = 0) -> torch.Tensor:
    """Flat weights ``(n, D)`` of kaiming-initialized networks with small random biases."""
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in spec.param_shapes().items():
        scale = (2 / shape[-1]) ** 0.5 if name.endswith("weight") else 0.1
        params[name] = torch.randn(n, *shape, generator=gen) * scale
    return flatten_params(params, spec)


DEMO_FEATURES = {"input": "concat", "spectrum": True, "products": True, "function": True}


def build(
    config: dict, spec: MLPSpec, latent: int, n_probe: int, demo: bool = False
) -> WeightAutoencoder:
    """The model with this encoder (``demo``: with the demo's concatenated features)."""
    torch.manual_seed(0)
    extra = {}
    if demo:
        n = FeatureUse.from_dict(DEMO_FEATURES).spec.width(spec)
        extra = {"features": DEMO_FEATURES, "stats_mean": [0.0] * n, "stats_std": [1.0] * n}
        extra["probe_targets"] = torch.randint(spec.widths[-1], (n_probe,))
    return WeightAutoencoder(
        widths=spec.widths,
        encoder=config,
        decoder=DEFAULT_DECODER,
        latent_dim=latent,
        functional_weight=1.0,
        functional_kind="kl",
        n_probe=n_probe,
        probe_inputs=torch.randn(n_probe, spec.widths[0]),
        scheduler=None,
        **extra,
    )


def encoder_pass(model: WeightAutoencoder, flat: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model.encode_learned(flat).square().mean().backward()


def train_step(model: WeightAutoencoder, opt: torch.optim.Optimizer, batch: dict) -> None:
    opt.zero_grad(set_to_none=True)
    model.compute_losses(batch)["loss"].backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 32, 32, 10])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--latent", type=int, default=8)
    ap.add_argument("--n-probe", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--kinds", nargs="+", default=None, help="only these conf/encoder kinds")
    ap.add_argument(
        "--variant", action="append", default=[], help="KIND:KEY=VALUE[,KEY=VALUE]: another row"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    spec = MLPSpec(tuple(args.widths))
    flat = random_networks(spec, args.batch)
    batch = {"weights": flat, "member_id": torch.arange(args.batch)}

    models, demos, errors = {}, {}, {}
    configs = encoder_configs(args.kinds)
    configs.update(variant_configs(encoder_configs(None), args.variant))
    for kind, config in configs.items():
        try:
            models[kind] = build(config, spec, args.latent, args.n_probe)
            demos[kind] = build(config, spec, args.latent, args.n_probe, demo=True)
        except Exception as e:  # a config that does not build is a row, not a crash
            errors[kind] = f"{type(e).__name__}: {e}".splitlines()[0]
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    demo_opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in demos.items()}
    jobs = {
        "encoder": lambda k: encoder_pass(models[k], flat),
        "train step": lambda k: train_step(models[k], opts[k], batch),
        "demo step": lambda k: train_step(demos[k], demo_opts[k], batch),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for job, run in jobs.items():
        for kind in models:
            run(kind)  # warm-up
        for _ in range(args.repeats):
            for kind in models:
                t0 = clock()
                run(kind)
                times.setdefault((job, kind), []).append(clock() - t0)
    med = {key: statistics.median(ts) for key, ts in times.items()}

    print(
        f"Encoders on a batch of {args.batch} {list(spec.widths)} relu networks, latent "
        f"{args.latent}, {args.threads} thread(s), {args.clock} time, medians of "
        f"{args.repeats} repeats; networks per second and time relative to mlp.\n"
    )
    print(
        "| encoder | parameters | encoder fwd+bwd | x mlp | train step | x mlp "
        "| demo step | x mlp |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = "mlp" if "mlp" in models else next(iter(models), None)
    for kind, model in models.items():
        n_par = sum(p.numel() for p in model.encoder.parameters())
        cells = [kind, f"{n_par:,}"]
        for job in jobs:
            t = med[(job, kind)]
            cells += [f"{args.batch / t:,.0f}", f"{t / med[(job, base)]:.1f}"]
        print("| " + " | ".join(cells) + " |")
    for kind, err in errors.items():
        print(f"| {kind} | - | {err} | | | | | |")


if __name__ == "__main__":
    main()
