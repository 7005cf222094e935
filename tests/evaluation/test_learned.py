"""What learning adds: the "learned" representation (the encoder's own coordinates, without
the invariant features a latent may carry), its probes and its comparisons."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from weightspace.autoencoder import WeightAutoencoder
from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation import evaluate_autoencoder
from weightspace.evaluation.compare import COMPARISON_COLUMNS, compare_probes
from weightspace.evaluation.evaluate import COMPARED, combined_representation
from weightspace.evaluation.results import EvalResults
from weightspace.evaluation.splits import load_split
from weightspace.evaluation.tables import format_comparisons


@pytest.fixture(autouse=True, scope="module")
def _single_threaded():
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def datamodule(api_zoo_path):
    dm = WeightDataModule(api_zoo_path, batch_size=8)
    dm.setup()
    return dm


class Plain:
    """A stand-in latent without ``encode_learned``: 3 principal coordinates of the training
    vectors, then 2 fixed random projections (the 'hand-made features' it carries)."""

    def __init__(self, x: torch.Tensor):
        self.mean = x.mean(0)
        self.v = torch.linalg.svd(x - self.mean, full_matrices=False)[2][:3]  # (3, D)
        self.extra = torch.randn(x.shape[1], 2, generator=torch.Generator().manual_seed(0))

    def learned(self, w: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, 3)
        return (w - self.mean) @ self.v.T

    def encode(self, w: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, 5)
        return torch.cat([self.learned(w), w @ self.extra], 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (B, 5) -> (B, D)
        return z[:, :3] @ self.v + self.mean


class Concat(Plain):
    """The same latent, saying which of its coordinates the encoder learned."""

    def encode_learned(self, w: torch.Tensor) -> torch.Tensor:
        return self.learned(w)


def _pairs(comparisons: pd.DataFrame) -> dict[str, list[str]]:
    """The baselines of each compared representation, in the order of the rows."""
    out: dict[str, list[str]] = {}
    for rep, base in zip(comparisons["representation"], comparisons["baseline"]):
        if base not in out.setdefault(rep, []):
            out[rep].append(base)
    return out


def test_learned_row_is_probed_compared_and_saved(datamodule, digits, tmp_path):
    train = load_split(datamodule, "train").weights
    kwargs = {"latent_dim": 5, "n_samples": 4, "boosting": ("latent", "learned", "stats")}
    res = evaluate_autoencoder(Concat(train), datamodule, digits, **kwargs)
    plain = evaluate_autoencoder(Plain(train), datamodule, digits, **kwargs)

    probes = res.probes
    # A stand-in without encode_learned has no learned row; one with it does, probed like
    # the latent (linear and boosting probes on every target).
    assert "learned" not in set(plain.probes["representation"])
    assert "learned" not in set(plain.comparisons["representation"])
    assert "learned" not in set(plain.comparisons["baseline"])
    learned = probes[probes.representation == "learned"]
    latent = probes[probes.representation == "latent"]
    assert set(learned["probe"]) == {"ridge", "logistic", "boosting"}  # (logistic: constant)
    default = inspect.signature(evaluate_autoencoder).parameters["boosting"].default
    assert "learned" in default  # boosted by default, as the latent
    assert learned[["probe", "target", "metric"]].values.tolist() == (
        latent[["probe", "target", "metric"]].values.tolist()
    )
    ok = (learned.note == "") & learned.metric.isin(["r2", "accuracy"])
    assert ok.any() and np.isfinite(learned.loc[ok, "value"]).all()
    # The encoder's coordinates are the latent without its 2 extra columns: other numbers.
    assert not np.allclose(learned.loc[ok, "value"], latent.loc[ok.values, "value"])
    cells = res.probe_summary()
    assert {"learned linear", "learned boosting"} <= set(cells.columns)
    assert "learned linear" in res.table.splitlines()[0]

    # Adding the learned row shifts nothing: every other probe and comparison is bit-identical.
    pd.testing.assert_frame_equal(
        probes[probes.representation != "learned"].reset_index(drop=True),
        plain.probes,
        check_exact=True,
    )
    comp = res.comparisons
    old = comp[(comp.representation == "latent") & (comp.baseline != "learned")]
    pd.testing.assert_frame_equal(old.reset_index(drop=True), plain.comparisons, check_exact=True)

    # The latent against every other representation, the learned coordinates against the
    # field's baselines and the invariant features.
    assert _pairs(comp) == {
        "latent": ["stats", "invariants", "raw", "pca", "learned"],
        "learned": ["stats", "invariants", "raw"],
    }
    # (and "probed" for an encoder with probe features, "signal" on INR zoos: test_evaluation.py,
    # test_inr_autoencoder.py)
    assert dict(COMPARED)["learned"] == ("stats", "invariants", "raw", "probed", "signal")
    row = comp[(comp.representation == "learned") & (comp.baseline == "stats")].iloc[0]
    mine = learned[(learned.probe == "ridge") & (learned.target == row.target)]
    assert row.ours == float(mine.loc[mine.metric == "r2", "value"].iloc[0])

    # Saved and read back: the same frame, column representation first.
    back = EvalResults.load(res.save(tmp_path / "eval")["json"].parent)
    assert list(back.comparisons.columns) == COMPARISON_COLUMNS
    assert COMPARISON_COLUMNS[0] == "representation"
    pd.testing.assert_frame_equal(back.comparisons, comp, check_exact=True)
    pd.testing.assert_frame_equal(back.probes, probes, check_exact=True)

    # The printed table: a row per target, probe family and representation, side by side.
    lines = format_comparisons(back.comparisons).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["target", "probe", "representation", "stats", "invariants", "raw", "pca",
                      "learned"]  # fmt: skip
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(body) == comp.groupby(["target", "probe", "representation"]).ngroups
    assert [r[2] for r in body[:2]] == ["latent", "learned"] and body[0][:2] == body[1][:2]
    assert body[1][6] == body[1][7] == "" and body[0][7] != ""  # learned: no pca, no learned


def test_comparisons_of_older_runs_read_as_the_latents(datamodule, digits, tmp_path):
    """comparisons.csv written before it named the representation: the latent's rows."""
    train = load_split(datamodule, "train").weights
    res = evaluate_autoencoder(Plain(train), datamodule, digits, n_samples=4, boosting=False)
    paths = res.save(tmp_path / "eval")
    res.comparisons.drop(columns="representation").to_csv(paths["comparisons"], index=False)
    back = EvalResults.load(tmp_path / "eval")
    pd.testing.assert_frame_equal(back.comparisons, res.comparisons, check_exact=True)
    old = format_comparisons(res.comparisons.drop(columns="representation"))
    assert old == format_comparisons(res.comparisons)


@pytest.mark.parametrize("features", [None, "concat"])
def test_learned_row_of_an_autoencoder(datamodule, digits, features):
    """WeightAutoencoder.encode_learned: the same numbers as the latent when the latent
    carries no features; the encoder's latent_dim coordinates when it concatenates them."""
    torch.manual_seed(0)
    use = {"input": features} if features else None
    model = WeightAutoencoder.from_datamodule(
        datamodule, n_probe=16, scheduler=None, latent_dim=4, features=use
    )
    res = evaluate_autoencoder(model, datamodule, digits, n_samples=4, boosting=("learned",))
    probes = res.probes.set_index(["representation", "probe", "target", "metric"])
    latent = probes.loc["latent"]
    learned = probes.loc["learned"]
    lin = learned[learned.index.get_level_values("probe") != "boosting"]
    comp = res.comparisons
    vs_learned = comp[(comp.representation == "latent") & (comp.baseline == "learned")]
    if features is None:
        assert res.info["latent_dim"] == 4
        # The same probes on the same numbers: the same values, notes and parameters.
        pd.testing.assert_frame_equal(lin, latent.loc[lin.index], check_exact=True)
        assert (vs_learned["difference"].dropna() == 0).all() and len(vs_learned) > 0
        assert set(vs_learned["verdict"]) == {"tied"}
    else:
        assert res.info["latent_dim"] > 4  # 4 learned numbers, then the invariant features
        ok = lin["note"] == ""
        assert not np.allclose(lin.loc[ok, "value"], latent.loc[lin.index[ok], "value"])
    learned_vs = comp[comp.representation == "learned"]
    assert set(learned_vs["baseline"]) == {"stats", "invariants", "raw"}
    # The learned coordinates beside the invariant features: what a concatenating latent is
    # already, so only a latent of the learned numbers alone gets the row.
    reps = set(res.probes["representation"])
    assert ("combined" in reps) == (features is None)
    if features is None:
        combined = comp[comp.representation == "combined"]
        assert list(dict.fromkeys(combined["baseline"])) == ["stats", "invariants"]
        assert combined["ours"].notna().any()


def test_combined_is_the_learned_coordinates_beside_the_invariant_features():
    rng = np.random.default_rng(0)
    split = lambda width: tuple(rng.normal(size=(n, width)) for n in (6, 3, 4))  # noqa: E731
    learned, invariants = split(2), split(5)
    reps = {"latent": learned, "learned": learned, "invariants": invariants}
    (name, got), *more = combined_representation(reps).items()
    assert name == "combined" and not more
    for part, a, b in zip(got, learned, invariants):
        np.testing.assert_array_equal(part, np.concatenate([a, b], 1))
    # A latent that carries more than the learned numbers, or none learned: nothing added.
    assert combined_representation({**reps, "latent": split(7)}) == {}
    assert combined_representation({"latent": learned, "invariants": invariants}) == {}


def test_compare_probes_baselines_keep_the_resamples():
    """Choosing baselines, or adding another subject's probes, leaves each comparison's
    numbers as they were: the bootstrap draws depend on the subject's probes only."""
    rng = np.random.default_rng(0)
    n = 60
    y = rng.normal(size=n)
    mask = np.ones(n, dtype=bool)
    pred = {
        (rep, "ridge", "t"): (mask, y + s * rng.normal(size=n))
        for rep, s in [("latent", 0.3), ("stats", 0.5), ("pca", 1.0)]
    }
    groups = np.arange(n) // 2
    base = compare_probes(pred, {"t": y}, groups, seed=3)
    more = {**pred, ("learned", "ridge", "t"): (mask, y + 0.4 * rng.normal(size=n))}
    chosen = compare_probes(more, {"t": y}, groups, seed=3, baselines=["pca", "stats"])
    assert list(chosen["baseline"]) == ["pca", "stats"]
    pd.testing.assert_frame_equal(
        chosen.set_index("baseline").loc[["stats", "pca"]].reset_index()[base.columns], base
    )
    assert set(base["representation"]) == {"latent"}
    learned = compare_probes(more, {"t": y}, groups, subject="learned", seed=3)
    assert set(learned["representation"]) == {"learned"}
    assert list(learned["baseline"]) == ["latent", "stats", "pca"]
