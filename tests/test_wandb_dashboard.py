"""The W&B dashboard, read back from the offline runs' own files (no network, no W&B API).

An offline run writes ``run-<id>.wandb``: W&B's record log (LevelDB-style blocks of
protobuf ``Record``s). :func:`read_run` replays it into the run's name, config, summary,
history rows and artifacts, as the W&B app would show them after ``wandb sync``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from weightspace.config import CONF_DIR
from weightspace.tracking import FITTED, run_config, run_name, sweep_overrides

BLOCK = 32768  # W&B's record log: 7-byte file header, then 32 KiB blocks of 7-byte-headed chunks


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B record log"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full, first | middle, last
        if kind in (2, 3):
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(folder: Path) -> dict[str, Any]:
    """``name``, ``config``, ``summary`` (latest values), ``history`` (rows), ``artifacts``
    (``{name: (type, [reference URIs])}``) and ``folder`` of an offline run folder."""
    (log,) = folder.glob("run-*.wandb")
    # W&B's service may still be writing the log when ``finish`` returns: wait for its end.
    deadline = time.monotonic() + 30
    while True:
        records = list(_records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{log}: the run never finished"
        time.sleep(0.1)
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": {}}
    out["folder"] = folder
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["name"] = r.run.display_name
            out["config"] |= {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "config":
            out["config"] |= {u.key: json.loads(u.value_json) for u in r.config.update}
        elif kind == "summary":
            out["summary"] |= {_key(u): json.loads(u.value_json) for u in r.summary.update}
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "artifact":
            refs = [m.ref for m in r.artifact.manifest.contents]
            out["artifacts"][r.artifact.name] = (r.artifact.type, refs)
    return out


def offline_runs(log_dir: Path) -> list[dict[str, Any]]:
    return [read_run(f) for f in sorted((log_dir / "wandb").glob("offline-run-*"))]


def _keys(value: Any, prefix: str = "") -> list[str]:
    """Every key path in a nested config."""
    if not isinstance(value, dict):
        return []
    return [p for k, v in value.items() for p in (f"{prefix}{k}", *_keys(v, f"{prefix}{k}."))]


def _image_files(run: dict[str, Any], key: str) -> list[Path]:
    rows = [h for h in run["history"] if f"{key}/path" in h]
    assert rows, f"no image {key}"
    assert all(h[f"{key}/_type"] == "image-file" for h in rows)
    return [run["folder"] / "files" / h[f"{key}/path"] for h in rows]


# --------------------------------------------------------------------------- the helpers
def test_run_config_drops_fitted_values_at_any_depth():
    cfg = {"seed": 0, "model": {"latent_dim": 8, "stats_mean": [0.1] * 50, "normalizer": {}}}
    cfg["runs"] = [{"stats_std": [1.0], "lr": 0.1}]
    assert run_config(cfg) == {"seed": 0, "model": {"latent_dim": 8}, "runs": [{"lr": 0.1}]}
    assert {"stats_mean", "stats_std", "normalizer"} <= FITTED


def test_sweep_jobs_are_named_by_their_overrides():
    assert run_name("ae-mlp-none") == "ae-mlp-none"
    assert run_name("ae-mlp-none", "seed=1") == "ae-mlp-none[seed=1]"
    assert sweep_overrides() is None  # not in a Hydra job
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train_autoencoder", ["seed=1", "model.latent_dim=4"], True)
    single = cfg.copy()
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_overrides() == "model.latent_dim=4,seed=1"
        with open_dict(single):
            single.hydra.mode = "RUN"
        HydraConfig.instance().set_config(single)
        assert sweep_overrides() is None, "a single run keeps its plain name"
    finally:
        HydraConfig.instance().cfg = None


def test_one_architecture_of_a_mixed_run_logs_under_its_own_keys():
    """Each head's evaluation of a run over several architectures logs under eval/<arch>/:
    three evaluations in one W&B run do not overwrite each other's numbers."""
    from weightspace.evaluation.dashboard import _scoped

    keys = ["eval/probe/latent/test_acc/ridge/r2", "eval/figures/latent_map", "eval/recon"]
    scoped = [_scoped(k, "64-16-10") for k in keys]
    assert scoped == [
        "eval/64-16-10/probe/latent/test_acc/ridge/r2",
        "eval/64-16-10/figures/latent_map",
        "eval/64-16-10/recon",
    ]
    assert len({_scoped(k, a) for k in keys for a in ("64-16-10", "64-8-10")}) == 6


def test_headline_names_are_stable_and_finite():
    import pandas as pd

    from weightspace.evaluation.dashboard import headline
    from weightspace.evaluation.results import EvalResults

    probes = pd.DataFrame(
        [
            ["latent", "linear", "test_acc", "r2", 0.8, "", ""],
            ["raw", "linear", "epoch", "r2", float("nan"), "", ""],
        ],
        columns=["representation", "probe", "target", "metric", "value", "param", "note"],
    )
    rec = pd.DataFrame(
        {"recon_acc": [0.5, 0.4], "acc_retention_of_means": [0.6, 0.5], "agreement": [0.7, 0.6]},
        index=["autoencoder", "autoencoder epoch 3"],
    )
    results = EvalResults(
        probes=probes,
        reconstruction=rec,
        generation={"sample_acc_median": 0.3, "activation": "relu", "n_fit": 5},
        audit={"score": 0.25, "ci_low": float("nan")},
    )
    h = headline(results)
    assert h["eval/probe/latent/test_acc/linear/r2"] == 0.8
    assert "eval/probe/raw/epoch/linear/r2" not in h, "NaN is left out"
    assert h["eval/recon/autoencoder_epoch_3/recon_acc"] == 0.4
    assert h["eval/accuracy_retained"] == 0.6 and h["eval/label_agreement"] == 0.7
    assert h["eval/samples_acc_median"] == 0.3 and h["eval/generation/n_fit"] == 5
    assert h["eval/audit_score"] == 0.25 and h["eval/audit/score"] == 0.25
    assert "eval/audit/ci_low" not in h and "eval/generation/activation" not in h


# --------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def ae_wandb(api_zoo_path, tmp_path_factory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A tiny autoencoder run logged offline (2 epochs, evaluation on): its root, its
    metrics and its W&B run read back."""
    from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train

    root = tmp_path_factory.mktemp("ae_wandb")
    overrides = [
        f"zoo={api_zoo_path}",
        f"paths.root_dir={root}",
        f"run_dir={root / 'outputs' / 'autoencoder' / 'wb'}",
        "logger=wandb",
        "logger.mode=offline",
        "evaluate=true",
        "model.n_probe=16",
        "model.latent_dim=8",
        "model.encoder.hidden=[32]",
        "model.decoder.hidden=[32]",
        "model.features.input=add",  # fitted stats_mean / stats_std in the hyperparameters
        "data.batch_size=8",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    metrics = train(cfg)
    (run,) = offline_runs(root / "outputs")
    return root, metrics, run


@pytest.mark.slow
def test_autoencoder_run_has_headline_numbers_curves_images_and_checkpoint(ae_wandb):
    _, metrics, run = ae_wandb
    s = run["summary"]
    # headline numbers under stable names, the same as the evaluation's files
    ev = metrics["evaluation"]
    rec = ev.reconstruction.loc["autoencoder"]
    assert s["eval/accuracy_retained"] == pytest.approx(rec["acc_retention_of_means"])
    assert s["eval/label_agreement"] == pytest.approx(rec["agreement"])
    assert s["eval/samples_acc_median"] == pytest.approx(ev.generation["sample_acc_median"])
    row = ev.probes.query("representation == 'latent' and target == 'test_acc'").iloc[0]
    key = f"eval/probe/latent/test_acc/{row.probe}/{row.metric}"
    assert s[key] == pytest.approx(row.value)
    assert {"latent", "pca", "stats", "raw"} <= {k.split("/")[2] for k in s if "/probe/" in k}
    # train loss at every step and once per epoch
    steps = [h for h in run["history"] if "train/loss" in h]
    assert len(steps) == metrics["global_step"], "one train/loss point per optimizer step"
    epochs = [h for h in run["history"] if "train/loss_epoch" in h]
    assert [h["epoch"] for h in epochs] == [0, 1]
    # the figures as images, their files in the run folder
    for name in ("latent_map", "reconstruction", "samples"):
        (png,) = _image_files(run, f"eval/figures/{name}")
        assert png.is_file() and png.stat().st_size > 1000, name
    # no fitted arrays, no key twice (the model's hyperparameters not repeated at the top)
    config = run["config"]
    leaves = {k.rsplit(".", 1)[-1] for k in _keys(config)}
    assert not leaves & FITTED, leaves & FITTED
    assert "latent_dim" not in config and "widths" not in config
    assert config["model"]["latent_dim"] == 8
    assert config["resolved"]["widths"] == [64, 16, 10], "what only the zoo knew, once"
    assert run["name"] == "ae-mlp-none"
    # the best checkpoint by reference, and the run folder
    ((kind, refs),) = [v for k, v in run["artifacts"].items() if k.startswith("checkpoint-")]
    assert kind == "model" and refs == [Path(metrics["best_checkpoint"]).resolve().as_uri()]
    assert s["run_dir"] == metrics["run_dir"]


@pytest.mark.slow
def test_analysis_run_records_what_it_analysed_and_keeps_every_figure(ae_wandb, tmp_path):
    from weightspace.analysis import analyze, compose_config

    root, metrics, _ = ae_wandb
    run_dir = Path(metrics["run_dir"])
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"autoencoder={run_dir}",
        "sections=[latent]",
        "latent.umap=false",
        "latent.n_trajectories=3",
        "logger=wandb",
        "logger.mode=offline",
    )
    result = analyze(cfg)
    (run,) = offline_runs(tmp_path / "outputs")
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    zoo = json.loads((run_dir / "run.json").read_text())["zoo"]
    for got in (run["config"], {k.removeprefix("analysed/"): v for k, v in run["summary"].items()}):
        assert got["autoencoder"] == str(run_dir) and got["zoo"] == str(Path(zoo).resolve())
        assert got["autoencoder_wandb_id"] == wandb_id
    # every figure of the report, none replaced by a table of the same name
    figures = {k.rsplit("/", 1)[0] for h in run["history"] for k in h if k.endswith("/_type")}
    figures = {k for k in figures if "/figures/" in k}
    assert len(figures) == len(result["pngs"]) > 0
    for key in figures:
        (png,) = _image_files(run, key)
        assert png.is_file()
    # the HTML report itself
    (row,) = [h for h in run["history"] if "report/path" in h]
    assert row["report/_type"] == "html-file"
    html = (run["folder"] / "files" / row["report/path"]).read_text()
    assert html == Path(result["report"]).read_text()


def test_zoo_run_has_per_epoch_curves_and_the_zoo_by_reference(make_cfg, tmp_path):
    from weightspace.zoo.generate import generate
    from weightspace.zoo.store import Zoo

    cfg = make_cfg("logger=wandb", "logger.mode=offline", "zoo.checkpoints=[0,1,2]")
    summary = generate(cfg)
    (run,) = offline_runs(tmp_path / "outputs")
    rows = [h for h in run["history"] if "curves/test_acc/median" in h]
    assert [h["epoch"] for h in rows] == [0, 1, 2]
    m = Zoo.open(summary.path).metrics
    for h in rows:
        acc = m.loc[m["epoch"] == h["epoch"], "test_acc"]  # tiny zoo: none diverged
        assert h["curves/test_acc/median"] == pytest.approx(acc.median())
        assert h["curves/test_loss/max"] == pytest.approx(
            m.loc[m["epoch"] == h["epoch"], "test_loss"].max()
        )
    ((kind, refs),) = [v for v in run["artifacts"].values() if v[0] != "run_table"]
    assert kind == "zoo" and all(r.startswith(summary.path.resolve().as_uri()) for r in refs)
    assert any(r.endswith("manifest.json") for r in refs)
