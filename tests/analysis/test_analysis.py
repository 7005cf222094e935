"""Analysis and reports: the measures are right where the answer is known, every figure
function returns finite numbers of the right shapes, the report embeds every figure, and
``analyze(cfg)`` runs end to end on tiny zoos (presets included, with their zoos shrunk)."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, cli_env, compose_cfg
from matplotlib.figure import Figure as MplFigure
from omegaconf import OmegaConf

from weightspace import symmetry as S
from weightspace.analysis import (
    analyze,
    cohort_stats,
    compose_config,
    pairs,
    patterns,
    runs_differ,
    symmetry_breaking,
    weight_norm,
)
from weightspace.analysis import measures as M
from weightspace.analysis.cohort import Cohort
from weightspace.analysis.report import Figure, Report, Section, Table, jsonable, write_report
from weightspace.analysis.run import compose_generate, zoo_overrides
from weightspace.config import CONF_DIR
from weightspace.errors import ConfigError, ZooError
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.generate import generate
from weightspace.zoo.idx import write_idx
from weightspace.zoo.store import Zoo

PRESETS = ("patterns", "runs_differ", "symmetry_breaking", "weight_norm")
# Makes any preset's zoos tiny (the later value of a key wins).
TINY_ZOO = {
    "zoo.size": "4",
    "zoo.shard_size": "4",
    "zoo.hparams.epochs": "2",
    "zoo.checkpoints": "[0,1]",
    "zoo.hparams.lr": "[0.02,0.05]",
}
FAST_PAIRS = (
    "runs_differ.n_members=4",
    "runs_differ.n_interp_pairs=2",
    "runs_differ.n_interp_points=5",
)


# --------------------------------------------------------------------------- zoos
# Twin tiny zoos of [64, 16, 10] on digits, the same members but for one setting.
TWIN = ("zoo.size=4", "zoo.shard_size=4", "zoo.hparams.epochs=2", "zoo.checkpoints=[0,1]")


@pytest.fixture(scope="session")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    make = {
        "random": (),
        "constant": ("zoo.hparams.init=constant", "zoo.hparams.init_value=0.5"),
        "wn": ("model.weight_norm=true",),
    }
    return {
        k: generate(compose_cfg(root, *TWIN, f"zoo.name={k}", *extra)).path
        for k, extra in make.items()
    }


@pytest.fixture(scope="session")
def api(api_zoo_path) -> Cohort:
    return Cohort.of(Zoo.open(api_zoo_path))


def finite(x) -> bool:
    a = np.asarray(x, dtype=float)
    return a.size > 0 and bool(np.isfinite(a).all())


def as_json(data) -> dict:
    """Figure data must survive the report's JSON (NaN as null) unchanged in structure."""
    return json.loads(json.dumps(jsonable(data), allow_nan=False))


# --------------------------------------------------------------------------- measures
def test_distinct_units_counts_equal_rows_transitively():
    w = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [1.0, 2.0 + 1e-6]])[None]  # (1, 4, 2)
    b = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert M.distinct_units(w, b).tolist() == [2]
    assert M.distinct_units(w, b, tolerance=1e-9).tolist() == [3]
    assert M.distinct_units(w, torch.tensor([[0.5, 0.6, 0.5, 0.5]])).tolist() == [3]
    zero = torch.zeros(2, 5, 3)
    assert M.distinct_units(zero, None).tolist() == [1, 1]


def test_constant_init_keeps_one_unit_random_init_keeps_all(twins):
    for kind, expected in (("constant", 1), ("random", 16)):
        zoo = Zoo.open(twins[kind])
        for epoch in zoo.epochs:
            p = zoo.weights(epoch)
            n = M.distinct_units(p["layers.0.weight"], p["layers.0.bias"])
            assert n.tolist() == [expected] * len(zoo), (kind, epoch)


def test_effective_rank_of_known_matrices():
    ones = torch.ones(1, 6, 4)
    eye = torch.eye(5)[None]
    assert M.effective_rank(ones).item() == pytest.approx(1.0, abs=1e-6)
    assert M.effective_rank(eye).item() == pytest.approx(5.0)
    assert M.effective_rank(torch.zeros(1, 3, 3)).item() == 0.0


def test_linear_cka_is_one_for_itself_and_blind_to_unit_order(api):
    p = api.weights(api.last_epoch)
    x = api.task.x_test[:200]
    h = S.hidden_activations(p, x, api.spec)[0]  # (M, B, 16)
    torch.testing.assert_close(M.linear_cka(h, h), torch.ones(len(api), dtype=torch.float64))
    # The same networks with their hidden units permuted: identical CKA against the rest.
    t = S.random_transform(api.spec, len(api), torch.Generator().manual_seed(0))
    hp = S.hidden_activations(S.apply_transform(p, api.spec, t), x, api.spec)[0]
    assert not torch.equal(hp, h)
    torch.testing.assert_close(M.linear_cka(hp, h), torch.ones(len(api), dtype=torch.float64))
    other = h.roll(1, dims=0)
    torch.testing.assert_close(M.linear_cka(hp, other), M.linear_cka(h, other))
    assert bool((M.linear_cka(h, other) < 1).all())
    assert torch.isnan(M.linear_cka(torch.zeros_like(h), h)).all()  # all units dead


def test_norms_function_distance_and_barrier():
    spec = MLPSpec((3, 4, 2))
    p = {
        "layers.0.weight": torch.ones(2, 4, 3),
        "layers.0.bias": torch.zeros(2, 4),
        "layers.1.weight": torch.ones(2, 2, 4),
        "layers.1.bias": torch.full((2, 2), 2.0),
    }
    n = M.layer_norms(p, spec)
    torch.testing.assert_close(n["weight"][0], torch.tensor([12**0.5, 8**0.5], dtype=torch.float64))
    assert math.isnan(n["ratio"][0, 0]) and n["ratio"][0, 1] == pytest.approx(8**0.5 / 8**0.5)
    out = torch.randn(3, 10, 5)
    d = M.function_distance(out, out, classification=True)
    assert all(bool((v == 0).all()) for v in d.values())
    ts = np.linspace(0, 1, 5)
    line = torch.tensor([[1.0, 1.25, 1.5, 1.75, 2.0]], dtype=torch.float64)
    assert M.loss_barrier(line, ts).item() == pytest.approx(0.0)
    assert M.loss_barrier(line + torch.tensor([0, 0, 1.0, 0, 0]), ts).item() == pytest.approx(1.0)


def test_run_groups_ignore_only_the_run(api):
    groups = M.run_groups(api.members)
    assert sorted(len(g) for g in groups) == [6, 6]  # two learning rates, six seeds each
    assert M.varying_columns(api.members) == ["lr"]


# --------------------------------------------------------------------------- figures
def check(made, n_panels: int | None = None) -> dict:
    fig, data = made
    assert isinstance(fig, MplFigure)
    if n_panels is not None:
        assert len([a for a in fig.axes if a.get_visible()]) == n_panels
    assert fig._suptitle is not None or all(a.get_title() for a in fig.axes)
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), "every panel has axis labels"
    return as_json(data)


def test_pattern_figures(api):
    spec, epochs = api.spec, api.epochs
    d = check(patterns.fig_norm_profile(api), 3)
    assert d["epochs"] == epochs == [0, 1, 3]
    for kind in ("weight", "bias"):
        assert np.shape(d[kind]["median"]) == (len(epochs), spec.n_layers)
        assert finite(d[kind]["median"])
    assert finite(np.asarray(d["ratio"]["median"])[1:])  # epoch 0: zero biases, no ratio
    d = check(patterns.fig_norm_by_group(api, "lr"), 3)
    assert d["groups"] == ["lr=0.02", "lr=0.1"] and d["n_members"] == [6, 6]
    assert np.shape(d["weight"]["median"]) == (2, spec.n_layers) and finite(d["weight"]["q75"])
    d = check(patterns.fig_weight_distributions(api), spec.n_layers)
    for layer in d["layers"]:
        assert set(layer["epochs"]) == {"0", "3"}
        assert len(layer["epochs"]["3"]["density"]) == len(layer["edges"]) - 1
        assert finite(layer["epochs"]["3"]["density"]) and layer["epochs"]["3"]["std"] > 0
    d = check(patterns.fig_spectra(api), spec.n_layers)
    for l, layer in enumerate(d["layers"]):
        k = min(spec.widths[l], spec.widths[l + 1])
        assert len(layer["epochs"]["3"]["median"]) == k and finite(layer["epochs"]["3"]["q25"])


def test_runs_differ_figures(api):
    m = pairs.pair_measures(api, n_members=4, seed=0)
    assert m["same_config"] and len(m["member_ids"]) == 4 and len(m["pairs"]) == 6
    assert len(set(api.members.set_index("member_id").loc[m["member_ids"], "lr"])) == 1
    for e in m["epochs"]:
        d = m["by_epoch"][str(e)]
        for k in ("distance_raw", "distance_canonical", "distance_aligned", "disagreement"):
            assert len(d[k]) == 6 and finite(d[k]), k
        # Matching only increases the inner product: never farther than the raw weights.
        assert (np.asarray(d["distance_aligned"]) <= np.asarray(d["distance_raw"]) + 1e-6).all()
        assert len(d["cka"]) == 1 and finite(d["cka"]) and max(d["cka"][0]) <= 1 + 1e-9
    check(runs_differ.fig_pair_distances(m), 3)
    d = check(runs_differ.fig_weight_vs_function(m), 2)
    assert len(d["disagreement"]) == 6 and -1 <= d["spearman_disagreement_aligned"] <= 1
    d = check(runs_differ.fig_interpolation(api, n_pairs=2, n_points=5), 2)
    for k in ("raw_train_loss", "aligned_train_loss", "raw_test_acc", "aligned_test_acc"):
        assert np.shape(d[k]) == (2, 5) and finite(d[k]), k
    raw, ali = np.asarray(d["raw_train_loss"]), np.asarray(d["aligned_train_loss"])
    # Aligning a network does not change its function: both paths start and end alike.
    np.testing.assert_allclose(raw[:, [0, -1]], ali[:, [0, -1]], rtol=1e-4)
    assert (np.asarray(d["raw_barrier"]) >= -1e-9).all() and len(d["aligned_barrier"]) == 2


def test_symmetry_figures(twins):
    rand = Cohort.of(Zoo.open(twins["random"]), "random")
    const = Cohort.of(Zoo.open(twins["constant"]), "constant")
    m = cohort_stats.symmetry_measures([rand, const])
    r, c = m["cohorts"]
    assert np.shape(c["distinct_median"]) == (3, 1)  # epochs 0, 1, 2 x hidden layers
    assert np.asarray(c["distinct_max"]).max() == 1 and np.asarray(r["distinct_min"]).min() == 16
    assert np.shape(c["rank_median"]) == (3, 2) and finite(c["rank_median"])
    np.testing.assert_allclose(c["rank_median"], 1.0, atol=1e-3)
    assert np.asarray(r["rank_median"]).min() > 2
    assert np.shape(r["test_acc"]["median"]) == (3,)
    check(symmetry_breaking.fig_distinct_units(m), 1)
    check(symmetry_breaking.fig_effective_rank(m), 1)
    check(symmetry_breaking.fig_symmetry_accuracy(m), 2)


def test_weight_norm_figures(twins):
    wn = Cohort.of(Zoo.open(twins["wn"]), "weight norm")
    plain = Cohort.of(Zoo.open(twins["random"]), "plain")
    d = check(weight_norm.fig_wn_learning_curves([wn, plain], None), 2)
    assert [c["label"] for c in d["cohorts"]] == ["weight norm", "plain"]
    curve = d["cohorts"][0]["groups"]["all"]
    assert curve["epochs"] == [0, 1, 2] and finite(curve["test_acc"]["median"])
    d = check(weight_norm.fig_wn_scales(wn, plain), 2)
    for layer in d["layers"]:
        assert len(layer["series"]) == 4 and finite(layer["v_growth"]["median"])
        assert all(finite(v["percent"]) for v in layer["series"].values())
    d = check(weight_norm.fig_wn_norm_profile([wn, plain]), 3)
    # Same seeds, same init: the two zoos start from the same effective weights.
    a, b = (np.asarray(c["init"]["weight"]["median"]) for c in d["cohorts"])
    np.testing.assert_allclose(a, b, rtol=1e-5)


# --------------------------------------------------------------------------- report
def test_report_embeds_every_figure_and_writes_json(api, tmp_path):
    f1, d1 = patterns.fig_norm_profile(api)
    f2, d2 = patterns.fig_spectra(api)
    sec = Section("patterns", "1. Patterns", "What is shared?", paragraphs=["x < y & z"])
    sec.figures = [Figure("a", "A", "first", f1, d1), Figure("b", "B", "second", f2, d2)]
    sec.tables = [Table("t", "T", __import__("pandas").DataFrame({"v": [1.0, float("nan")]}))]
    skipped = Section("other", "2. Other", "?", notes=["Skipped: no inputs."], skipped=True)
    files = write_report(Report("Title <tiny>", [sec, skipped]), tmp_path / "out")
    html = files.html.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2
    for b64, name in zip(images, ("a", "b")):
        png = base64.b64decode(b64)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert png == (tmp_path / "out" / f"{name}.png").read_bytes()
    assert "x &lt; y &amp; z" in html and "Title &lt;tiny&gt;" in html
    data = json.loads(files.data.read_text())
    assert data["sections"]["patterns"]["figures"]["a"]["png"] == "a.png"
    assert data["sections"]["patterns"]["tables"]["t"]["rows"] == [{"v": 1.0}, {"v": None}]
    assert data["sections"]["other"]["skipped"]
    assert not list((tmp_path / "out").glob(".*.tmp")), "no temporary files left behind"


def test_rewriting_a_report_removes_only_its_own_stale_figures(api, tmp_path):
    f1, d1 = patterns.fig_norm_profile(api)
    f2, d2 = patterns.fig_spectra(api)
    out = tmp_path / "out"
    first = Section("patterns", "1. Patterns", "?")
    first.figures = [Figure("a", "A", "", f1, d1), Figure("b", "B", "", f2, d2)]
    write_report(Report("one", [first]), out)
    (out / "mine.png").write_bytes(b"not the report's")  # a file the report did not write
    second = Section("patterns", "1. Patterns", "?")
    second.figures = [Figure("b", "B", "", f2, d2)]
    write_report(Report("two", [second]), out)
    assert sorted(p.name for p in out.glob("*.png")) == ["b.png", "mine.png"]


def test_default_report_names_keep_analyses_of_one_zoo_apart():
    from weightspace.analysis.run import QUESTION_SECTIONS, default_name

    assert default_name("zoo", list(QUESTION_SECTIONS)) == "zoo"
    assert default_name("zoo", ["patterns"]) == "zoo-patterns"
    assert default_name("zoo", ["latent", "patterns"]) != default_name("zoo", ["patterns"])


# --------------------------------------------------------------------------- analyze
def test_analyze_end_to_end(api_zoo_path, twins, tmp_path):
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"zoo={api_zoo_path}",
        f"compare_zoo={twins['constant']}",
        *FAST_PAIRS,
    )
    result = analyze(cfg)
    assert result["out"] == tmp_path / "outputs" / "analysis" / api_zoo_path.name
    s = result["sections"]
    assert [k for k, v in s.items() if not v["skipped"]] == [
        "patterns",
        "runs_differ",
        "symmetry_breaking",
    ]
    assert s["weight_norm"]["skipped"] and "weight" in s["weight_norm"]["notes"][0]
    assert s["latent"]["skipped"] and "autoencoder=RUN" in s["latent"]["notes"][0]
    html = result["report"].read_text()
    n_img = html.count('<img src="data:image/png;base64,')
    assert n_img == len(result["pngs"]) == 4 + 3 + 3
    assert all(p.stat().st_size > 0 for p in result["pngs"].values())
    data = json.loads(result["data"].read_text())
    assert data["sections"]["symmetry_breaking"]["summary"]["constant_distinct_units_max"] == 1


def test_analyze_weight_norm_and_names_from_the_zoo_dir(twins, tmp_path):
    zoo_dir = twins["wn"].parent
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"paths.zoo_dir={zoo_dir}",
        "zoo=wn",  # a name under paths.zoo_dir
        "compare_zoo=random",
        "sections=[weight_norm,symmetry_breaking]",
        f"out={tmp_path / 'r'}",
    )
    result = analyze(cfg)
    assert not result["sections"]["weight_norm"]["skipped"]
    assert result["sections"]["symmetry_breaking"]["skipped"]  # no constant-init members
    assert len(result["pngs"]) == 3 and (tmp_path / "r" / "report.html").exists()


def test_bad_inputs_are_one_line_errors(api_zoo_path, tmp_path):
    base = (f"paths.root_dir={tmp_path}", f"zoo={api_zoo_path}")
    with pytest.raises(ConfigError, match="sections: unknown"):
        analyze(compose_config(*base, "sections=[patterns,nope]"))
    with pytest.raises(ConfigError, match="zoo: required"):
        analyze(compose_config(f"paths.root_dir={tmp_path}"))
    with pytest.raises(ZooError, match="not a finished zoo"):
        analyze(compose_config(f"paths.root_dir={tmp_path}", f"zoo={tmp_path / 'none'}"))


# --------------------------------------------------------------------------- presets
def shrink(cfg) -> None:
    """Make every zoo a preset generates tiny (same keys replaced, in place)."""
    for key, candidates in cfg.generate.items():
        for name, candidate in candidates.items():
            overrides = zoo_overrides(candidate)
            kept = [o for o in overrides if o.split("=", 1)[0] not in TINY_ZOO]
            cfg.generate[key][name] = kept + [f"{k}={v}" for k, v in TINY_ZOO.items()]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_its_zoo_configs_are_valid(preset, tmp_path):
    cfg = compose_config(f"experiment=analysis/{preset}", f"paths.root_dir={tmp_path}")
    assert cfg.name == preset and cfg.sections == [preset]
    assert set(cfg.generate) <= {"zoo", "compare_zoo"} and "zoo" in cfg.generate
    for candidates in cfg.generate.values():
        for candidate in candidates.values():
            gcfg = compose_generate(zoo_overrides(candidate))
            assert gcfg.zoo.name.startswith("analysis-")


def test_compose_generate_inside_a_running_app_keeps_the_apps_hydra(tmp_path):
    """Presets compose conf/generate.yaml while the analysis app holds Hydra's global
    instance (one config root: the app's own), and leave it as it was."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        app = GlobalHydra.instance().hydra
        gcfg = compose_generate(["zoo.size=3"])
        assert gcfg.zoo.size == 3 and "hydra" not in gcfg
        assert GlobalHydra.instance().hydra is app
        assert compose("analyze", overrides=[f"zoo={tmp_path}"]).zoo == str(tmp_path)
        with pytest.raises(ConfigError, match="task=nope"):
            compose_generate(["task=nope"])
        assert GlobalHydra.instance().hydra is app
    assert not GlobalHydra.instance().is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_end_to_end_on_tiny_zoos(preset, tmp_path):
    cfg = compose_config(
        f"experiment=analysis/{preset}",
        f"paths.root_dir={tmp_path}",
        "progress=false",
        *FAST_PAIRS,
    )
    shrink(cfg)
    result = analyze(cfg)
    assert not result["sections"][preset]["skipped"], result["sections"][preset]["notes"]
    assert result["out"] == tmp_path / "outputs" / "analysis" / preset
    assert result["pngs"] and all(p.exists() for p in result["pngs"].values())
    assert list((tmp_path / "zoos").glob("analysis-*/manifest.json"))


def test_runs_differ_preset_takes_mnist_when_its_files_exist(tmp_path):
    cfg = compose_config(
        "experiment=analysis/runs_differ", f"paths.root_dir={tmp_path}", "progress=false"
    )
    shrink(cfg)
    cfg.sections = []  # only which zoo is made matters here
    result = analyze(cfg)
    assert "used candidate 'digits'" in result["notes"][0] and "MNIST" in result["notes"][0]
    assert (tmp_path / "zoos" / "analysis-runs-differ-digits" / "manifest.json").exists()

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    result = analyze(cfg)
    assert result["notes"] == []
    zoo = Zoo.open(tmp_path / "zoos" / "analysis-runs-differ-mnist")
    assert zoo.spec.widths == (784, 30, 10) and zoo.manifest["task"]["name"] == "mnist"


def test_preset_zoos_follow_the_paths_group(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    cfg = compose_config(
        "experiment=analysis/symmetry_breaking",
        f"paths.root_dir={tmp_path}",
        f"paths.zoo_dir={elsewhere}",
        "progress=false",
    )
    shrink(cfg)
    result = analyze(cfg)
    assert sorted(p.parent.name for p in elsewhere.glob("*/manifest.json")) == [
        "analysis-sb-constant",
        "analysis-sb-random",
    ]
    assert not (tmp_path / "zoos").exists()
    assert result["sections"]["symmetry_breaking"]["summary"]["constant_distinct_units_max"] == 1


def test_an_explicit_zoo_wins_over_the_preset(api_zoo_path, tmp_path):
    cfg = compose_config(
        "experiment=analysis/patterns", f"paths.root_dir={tmp_path}", f"zoo={api_zoo_path}"
    )
    result = analyze(cfg)
    assert not (tmp_path / "zoos").exists(), "nothing generated"
    assert not result["sections"]["patterns"]["skipped"]
    assert OmegaConf.select(cfg, "generate.zoo.digits") is not None


# --------------------------------------------------------------------------- command line
@pytest.mark.slow
def test_cli_writes_the_report_and_reports_errors_in_one_line(api_zoo_path, tmp_path):
    script = REPO / "scripts" / "analyze.py"
    ok = subprocess.run(
        [
            sys.executable,
            str(script),
            f"zoo={api_zoo_path}",
            "sections=[patterns]",
        ],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    # one section asked: the report is named after the zoo and the section
    report = tmp_path / "outputs" / "analysis" / f"{api_zoo_path.name}-patterns" / "report.html"
    assert f"report: {report}" in ok.stdout and report.exists()
    bad = subprocess.run(
        [sys.executable, str(script), f"zoo={tmp_path / 'missing'}"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: zoo: ")


@pytest.mark.slow
def test_wandb_run_gets_the_figures_and_tables(api_zoo_path, tmp_path):
    cfg = compose_config(
        f"paths.root_dir={tmp_path}",
        f"zoo={api_zoo_path}",
        "sections=[patterns]",
        "logger=wandb",
        "logger.mode=offline",
    )
    result = analyze(cfg)
    runs = list((tmp_path / "outputs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "one offline run, finished"
    assert len(list(runs[0].rglob("media/images/patterns/figures/*.png"))) == len(result["pngs"])
    assert list(runs[0].rglob("media/table/patterns/tables/*.table.json")), "the table is logged"
