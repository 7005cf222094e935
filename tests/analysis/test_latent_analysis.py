"""Section 5, the latent space: a run folder is rebuilt as training built it, every (member,
checkpoint) is encoded once, the section draws its maps and trajectories and carries the
run's probe table, and bad ``autoencoder=`` values are one-line errors.

One tiny autoencoder run (canon=align, so through a derived zoo) is trained per session on a
copy of the API zoo: 12 members x checkpoints 0, 1, 3, an MLP encoder, one epoch, with the
end-of-training evaluation (about 3 s).
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, run_cli
from hydra import compose, initialize_config_dir

from weightspace.analysis import analyze, compose_config
from weightspace.autoencoder.run import encode_zoo, find_runs, load_run, resolve_run
from weightspace.config import CONF_DIR
from weightspace.data.datamodule import WeightDataModule
from weightspace.errors import ConfigError, ZooError
from weightspace.zoo.store import Zoo

RUN_NAME = "tiny-align"
TINY_RUN = (
    "canon=align",
    "evaluate=true",
    "model.n_probe=16",
    "model.latent_dim=8",
    "model.encoder.hidden=[32]",
    "model.decoder.hidden=[32]",
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
)


def train_tiny_run(root: Path, zoo: Path, name: str = RUN_NAME) -> Path:
    """A tiny canon=align autoencoder run on ``zoo`` (its merge_many zoo is made next to it),
    written to ``root/outputs/autoencoder/<name>`` as scripts/train_autoencoder.py would."""
    from weightspace.autoencoder.train import CONFIG_DIR, CONFIG_NAME, train
    from weightspace.symmetry.derive import derive

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        dcfg = compose(
            "canonicalize",
            overrides=[f"parent={zoo}", "transform.kind=merge_many", "progress=false"],
        )
    derive(dcfg)
    run_dir = root / "outputs" / "autoencoder" / name
    overrides = [f"zoo={zoo}", f"paths.root_dir={root}", f"run_dir={run_dir}", *TINY_RUN]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIG_NAME, overrides=overrides)
    train(cfg)
    return run_dir


@pytest.fixture(scope="session")
def ae_root(api_zoo_path, tmp_path_factory) -> Path:
    """A root folder with zoos/api (a copy of the API zoo), zoos/api-merge_many and the run."""
    root = tmp_path_factory.mktemp("latent")
    zoo = root / "zoos" / "api"
    shutil.copytree(api_zoo_path, zoo)
    train_tiny_run(root, zoo)
    return root


@pytest.fixture(scope="session")
def run_dir(ae_root) -> Path:
    return ae_root / "outputs" / "autoencoder" / RUN_NAME


@pytest.fixture(scope="session")
def run(run_dir):
    return load_run(run_dir)


def latent_cfg(root: Path, *overrides: str):
    return compose_config(f"paths.root_dir={root}", "latent.umap=false", *overrides)


# --------------------------------------------------------------------------- load_run / encode
def test_load_run_rebuilds_the_runs_data(run, run_dir, ae_root):
    assert run.zoo == ae_root / "zoos" / "api-merge_many"  # the derived zoo, from run.json
    assert run.parent_zoo == ae_root / "zoos" / "api"
    assert run.canon == "align" and run.checkpoint.name.startswith("best-")
    assert not run.model.training
    # The same split and normalization as a datamodule built afresh from the run's config.
    fresh = WeightDataModule(str(run.zoo), seed=0)
    fresh.setup()
    assert run.datamodule.splits == fresh.splits
    assert run.datamodule.normalizer == fresh.normalizer
    assert str(run_dir) in run.describe()


def test_encode_zoo_matches_the_runs_own_loader(run):
    lat = encode_zoo(run)
    zoo = Zoo.open(run.zoo)
    n_members = int((~zoo.members["diverged"]).sum())
    assert len(lat) == lat.z.shape[0] == n_members * len(zoo.epochs)
    assert lat.z.shape[1] == 8 and np.isfinite(lat.z).all()
    assert lat.epochs == zoo.epochs
    key = lat.items[["member_id", "epoch"]]
    assert not key.duplicated().any()
    assert key.equals(key.sort_values(["member_id", "epoch"]).reset_index(drop=True))
    assert set(lat.items["split"]) == {"train", "val", "test"} and lat.items["seen"].all()
    assert lat.items["init"].map(type).eq(str).all()  # categories by name, not code
    # The test split, read by the run's own loader and encoded, gives the same latents.
    batch = next(iter(run.datamodule.test_dataloader()))
    with torch.no_grad():
        expected = run.model.encode(batch).numpy()
    rows = [
        lat.items.index[(lat.items.member_id == m) & (lat.items.epoch == e)][0]
        for m, e in zip(batch["member_id"].tolist(), batch["epoch"].tolist())
    ]
    assert (lat.items.loc[rows, "split"] == "test").all()
    np.testing.assert_allclose(lat.z[rows], expected, rtol=1e-5, atol=1e-6)
    last = encode_zoo(run, epochs="last")
    assert len(last) == n_members and (last.items["epoch"] == zoo.epochs[-1]).all()


def test_run_names_resolve(run_dir, ae_root):
    log_dir = ae_root / "outputs"
    assert resolve_run(run_dir, log_dir) == run_dir
    assert resolve_run(RUN_NAME, log_dir) == run_dir  # a name under log_dir/autoencoder
    assert resolve_run(f"autoencoder/{RUN_NAME}", log_dir) == run_dir  # relative to log_dir
    assert resolve_run("latest", log_dir) == run_dir
    assert find_runs(log_dir) == [run_dir]


def test_bad_runs_are_one_line_errors(run_dir, ae_root, tmp_path):
    with pytest.raises(
        ConfigError, match=r"^autoencoder: .*nowhere is not an autoencoder run"
    ) as e:
        resolve_run(tmp_path / "nowhere", ae_root / "outputs")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="is not an autoencoder run folder"):
        load_run(ae_root / "zoos" / "api")  # a folder, but a zoo
    with pytest.raises(ConfigError, match="latest: no autoencoder run"):
        resolve_run("latest", tmp_path)
    # The zoo the run trained on is gone.
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    record = json.loads((moved / "run.json").read_text())
    record["zoo"] = str(tmp_path / "deleted-zoo")
    (moved / "run.json").write_text(json.dumps(record))
    with pytest.raises(
        ZooError, match=r"^autoencoder: the zoo of run .* is gone: .*deleted-zoo"
    ) as e:
        load_run(moved)
    assert "\n" not in str(e.value)
    # A damaged checkpoint.
    for ckpt in (moved / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(b"not a checkpoint")
    record["zoo"] = str(ae_root / "zoos" / "api-merge_many")
    (moved / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        load_run(moved)


# --------------------------------------------------------------------------- the section
def test_latent_section_end_to_end(run_dir, ae_root, tmp_path):
    cfg = latent_cfg(
        tmp_path,
        f"zoo={ae_root / 'zoos' / 'api'}",
        f"autoencoder={run_dir}",
        "sections=[latent]",
        "latent.n_trajectories=5",
    )
    result = analyze(cfg)
    sec = result["sections"]["latent"]
    assert not sec["skipped"]
    assert any("canon=align" in n for n in sec["notes"])
    assert set(result["pngs"]) == {"latent_map_pca", "latent_trajectories"}
    assert all(p.stat().st_size > 0 for p in result["pngs"].values())

    data = json.loads(result["data"].read_text())
    assert "autoencoder" in data["inputs"]
    s = data["sections"]["latent"]
    zoo = Zoo.open(ae_root / "zoos" / "api")
    n_members, epochs = len(zoo), zoo.epochs
    pts = s["figures"]["latent_map_pca"]["data"]["points"]
    assert len(pts["x"]) == len(pts["y"]) == len(pts["split"]) == n_members * len(epochs)
    pairs = set(zip(pts["member_id"], pts["epoch"]))
    assert pairs == {(m, e) for m in range(n_members) for e in epochs}  # one point each
    assert set(pts["split"]) == {"train", "val", "test"}
    assert s["figures"]["latent_map_pca"]["data"]["panels"]["init"]["kind"] == "constant"
    assert s["figures"]["latent_map_pca"]["data"]["panels"]["epoch"]["kind"] == "categories"

    trajs = s["figures"]["latent_trajectories"]["data"]["trajectories"]
    assert len(trajs) == 5 and len({t["member_id"] for t in trajs}) == 5
    for t in trajs:
        assert t["epochs"] == epochs  # epoch 0 -> last, in order
        assert len(t["x"]) == len(t["y"]) == len(epochs)
        # Same coordinates as the member's points on the map.
        on_map = {
            e: (x, y)
            for m, e, x, y in zip(pts["member_id"], pts["epoch"], pts["x"], pts["y"])
            if m == t["member_id"]
        }
        assert [on_map[e] for e in epochs] == list(zip(t["x"], t["y"]))

    probes = s["tables"]["latent_probes"]["rows"]
    assert {r["target"] for r in probes} >= {"test_acc", "epoch"}
    assert "latent linear" in probes[0] and "stats boosting" in probes[0]
    assert "latent_reconstruction" in s["tables"]
    assert s["summary"]["n_points"] == n_members * len(epochs)
    assert len(s["paragraphs"]) >= 3
    html = result["report"].read_text()
    assert html.count('<img src="data:image/png;base64,') == 2
    assert "latent linear" in html and '<section id="latent">' in html


def test_one_checkpoint_per_member(run_dir, tmp_path):
    """latent.epochs=last: a map of the trained networks only; trajectories of one point."""
    cfg = latent_cfg(tmp_path, f"autoencoder={run_dir}", "sections=[latent]", "latent.epochs=last")
    result = analyze(cfg)
    s = json.loads(result["data"].read_text())["sections"]["latent"]
    assert set(s["figures"]["latent_map_pca"]["data"]["points"]["epoch"]) == {3}
    assert all(
        t["epochs"] == [3] for t in s["figures"]["latent_trajectories"]["data"]["trajectories"]
    )
    assert "epoch PC" not in s["paragraphs"][0]


def test_the_runs_zoo_is_analysed_when_no_zoo_is_given(run_dir, ae_root, tmp_path):
    cfg = latent_cfg(
        tmp_path,
        f"paths.log_dir={ae_root / 'outputs'}",
        "autoencoder=latest",
        "sections=[patterns,latent]",
        f"out={tmp_path / 'r'}",
    )
    result = analyze(cfg)
    assert not result["sections"]["patterns"]["skipped"]
    assert not result["sections"]["latent"]["skipped"]
    data = json.loads(result["data"].read_text())
    assert data["inputs"]["zoo"].startswith(str(ae_root / "zoos" / "api") + " (")


def test_umap_map_when_umap_is_importable(run_dir, tmp_path, monkeypatch):
    """The UMAP branch, with a stand-in module (the real one needs numba; optional)."""

    class FakeUMAP:
        def __init__(self, n_components, n_neighbors, min_dist, random_state):
            assert n_components == 2 and n_neighbors >= 2

        def fit_transform(self, z):
            return np.asarray(z)[:, :2] * 2.0

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"autoencoder={run_dir}",
        "sections=[latent]",
        "latent.umap=auto",
    )
    result = analyze(cfg)
    assert set(result["pngs"]) == {"latent_map_pca", "latent_map_umap", "latent_trajectories"}
    data = json.loads(result["data"].read_text())
    umap = data["sections"]["latent"]["figures"]["latent_map_umap"]["data"]
    assert umap["kind"] == "umap" and len(umap["points"]["x"]) == 36


def test_umap_required_but_missing_is_a_config_error(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"autoencoder={run_dir}",
        "sections=[latent]",
        "latent.umap=true",
    )
    with pytest.raises(ConfigError, match="umap-learn is not installed"):
        analyze(cfg)
    cfg.latent.umap = "auto"
    result = analyze(cfg)
    assert any("UMAP map left out" in n for n in result["sections"]["latent"]["notes"])


def test_without_an_autoencoder_the_section_is_skipped(api_zoo_path, tmp_path):
    result = analyze(latent_cfg(tmp_path, f"zoo={api_zoo_path}", "sections=[latent]"))
    sec = result["sections"]["latent"]
    assert sec["skipped"] and "autoencoder=RUN" in sec["notes"][0]
    assert result["pngs"] == {}


def test_bad_autoencoder_fails_before_any_work(api_zoo_path, tmp_path):
    cfg = latent_cfg(tmp_path, f"zoo={api_zoo_path}", f"autoencoder={tmp_path / 'no-run'}")
    with pytest.raises(ConfigError, match="^autoencoder: .*no-run is not an autoencoder run"):
        analyze(cfg)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_cli_bad_autoencoder_is_one_line_and_exit_2(api_zoo_path, tmp_path):
    bad = run_cli(
        tmp_path,
        f"zoo={api_zoo_path}",
        f"autoencoder={tmp_path / 'missing-run'}",
        timeout=300,
        script=REPO / "scripts" / "analyze.py",
    )
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: autoencoder: ") and "missing-run" in last
    assert "Traceback" not in bad.stderr


def test_probe_sentence_compares_like_with_like_and_leaves_the_reference_out():
    from weightspace.analysis.latent_space import _probe_sentence

    class Section:
        paragraphs: list[str] = []

    row = {"target": "init", "metric": "acc", "chance": "0.25"}
    row |= {"latent linear": "0.95", "latent boosting": "0.90", "stats linear": "0.73"}
    row |= {"stats boosting": "0.96", "invariants linear": "0.99", "pca linear": "0.40"}
    const = {k: "constant" for k in row} | {"target": "activation"}
    s = Section()
    _probe_sentence(s, pd.DataFrame([row, const]))
    (text,) = s.paragraphs
    assert "init: linear 0.95 vs 0.73 (stats), boosting 0.90 vs 0.96 (stats)" in text
    assert "0.99" not in text and "activation" not in text
