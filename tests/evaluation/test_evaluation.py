"""Evaluation: probes, baselines, reconstruction and generation metrics, the orchestration."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import Ridge
from threadpoolctl import threadpool_limits

from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation import evaluate_autoencoder
from weightspace.evaluation.compare import TOO_FEW, compare_probes
from weightspace.evaluation.probes import (
    ALPHAS,
    PROBE_COLUMNS,
    _ridge_path,
    fit_boosting_probe,
    fit_logistic_probe,
    fit_ridge_probe,
    probe_boosting,
    probe_classification,
    probe_regression,
    probe_table,
)
from weightspace.evaluation.reconstruction import reconstruction_metrics
from weightspace.evaluation.results import EvalResults, write_results
from weightspace.evaluation.sampling import (
    fit_latent_density,
    generation_metrics,
    nearest_neighbour_distances,
    top_fraction,
)
from weightspace.evaluation.scores import r2
from weightspace.evaluation.splits import load_split, probe_targets
from weightspace.evaluation.tables import format_comparisons, format_table
from weightspace.features import FeatureSpec
from weightspace.features.statistics import layer_statistics
from weightspace.nets.forward import forward
from weightspace.nets.spec import MLPSpec
from weightspace.zoo.store import Zoo


@pytest.fixture(autouse=True, scope="module")
def _single_threaded():
    """BLAS and scikit-learn's OpenMP single-threaded too, as torch in conftest: on these tiny
    problems extra threads only spin-wait (several times slower on a busy 2-core machine)."""
    with threadpool_limits(1):
        yield


def _split(*arrays, n_train, n_val):
    """(train, val, test) pieces of each array."""
    return [(a[:n_train], a[n_train : n_train + n_val], a[n_train + n_val :]) for a in arrays]


def _table_inputs(planted, *names: str):
    """:func:`probe_table`'s inputs from the planted data, 250 / 75 / 75 rows: the latent and
    the noise as representations, and the targets ``names`` (in that order) out of prop,
    cat, one_activation (a single class), flat (a constant) and absent (all NaN)."""
    z, noise, y, labels = planted
    pool = {
        "prop": y,
        "cat": labels,
        "one_activation": np.zeros(400, dtype=np.int64),
        "flat": np.full(400, 0.1),
        "absent": np.full(400, np.nan),
    }
    reps = {"latent": tuple(*_split(z, n_train=250, n_val=75))}
    reps["noise"] = tuple(*_split(noise, n_train=250, n_val=75))
    return reps, {t: tuple(*_split(pool[t], n_train=250, n_val=75)) for t in names}


@pytest.fixture(scope="module")
def planted():
    """Latents holding a linear property and 3 categories, and a noise representation."""
    rng = np.random.default_rng(0)
    n, d = 400, 8
    z = rng.normal(size=(n, d))
    labels = rng.integers(0, 3, size=n)
    z[:, 0] += 4.0 * (labels == 1)  # categories planted in two directions
    z[:, 1] += 4.0 * (labels == 2)
    y = z @ rng.normal(size=d) + 0.05 * rng.normal(size=n)
    noise = rng.normal(size=(n, d))
    return z, noise, y, labels


# --------------------------------------------------------------------------- probes
@pytest.mark.parametrize("n, d", [(30, 50), (50, 30)])  # wide: the dual path; tall: the SVD
def test_ridge_path_matches_sklearn(n, d):
    rng = np.random.default_rng(1)
    x, y, xe = rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=(7, d))
    alphas = np.array([1e-3, 1e-2, 1.0, 1e3])
    pred = _ridge_path(x, y, xe, alphas)
    for i, a in enumerate(alphas):
        np.testing.assert_allclose(pred[:, i], Ridge(alpha=a).fit(x, y).predict(xe), atol=1e-9)


def test_ridge_probe_recovers_a_planted_linear_property(planted):
    z, noise, y, _ = planted
    (zs, ys), (ns, _) = _split(z, y, n_train=250, n_val=75), _split(noise, y, n_train=250, n_val=75)
    good = probe_regression(zs[0], ys[0], zs[1], ys[1], zs[2], ys[2])
    bad = probe_regression(ns[0], ys[0], ns[1], ys[1], ns[2], ys[2])
    assert good["r2"] > 0.99 and good["kendall_tau"] > 0.9
    assert bad["r2"] < 0.1 and abs(bad["kendall_tau"]) < 0.25
    assert good["alpha"] in ALPHAS and bad["alpha"] > good["alpha"]


def test_ridge_alpha_is_chosen_on_validation():
    rng = np.random.default_rng(2)
    # Pure noise features, more of them than training rows: any fit is overfitting, and the
    # largest penalty (predicting the training mean) is clearly best on validation.
    x, y = rng.normal(size=(120, 200)), rng.normal(size=120)
    fit = fit_ridge_probe(x[:40], y[:40], x[40:80], y[40:80], x[80:])
    assert fit.param == ALPHAS.max()
    assert fit.param == min(fit.val_loss, key=fit.val_loss.get)
    assert fit.val_loss[ALPHAS.max()] < fit.val_loss[ALPHAS.min()]
    assert fit.pred_test.shape == (40,) and fit.pred_val.shape == (40,)
    # A noiseless linear target: the smallest penalties win instead.
    w = rng.normal(size=200)
    clean = fit_ridge_probe(x[:100], x[:100] @ w, x[100:], x[100:] @ w, None, alphas=[1e-3, 1e3])
    assert clean.param == 1e-3 and clean.pred_test is None
    # The candidates are exactly those given; choosing is not refitting on test.
    only = fit_ridge_probe(x[:40], y[:40], x[40:80], y[40:80], x[80:], alphas=[5.0])
    assert only.param == 5.0 and list(only.val_loss) == [5.0]


def test_refit_uses_validation_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    a = fit_ridge_probe(x[:20], y[:20], x[20:40], y[20:40], x[40:], alphas=[10.0], refit=True)
    b = fit_ridge_probe(x[:20], y[:20], x[20:40], y[20:40], x[40:], alphas=[10.0], refit=False)
    ref = Ridge(alpha=10.0)
    mean, std = x[:40].mean(0), x[:40].std(0)
    ref.fit((x[:40] - mean) / std, y[:40])
    np.testing.assert_allclose(a.pred_test, ref.predict((x[40:] - mean) / std), atol=1e-10)
    assert not np.allclose(a.pred_test, b.pred_test)


def test_logistic_probe_recovers_planted_categories(planted):
    z, noise, _, labels = planted
    (zs, ls), (ns, _) = (
        _split(z, labels, n_train=250, n_val=75),
        _split(noise, labels, n_train=250, n_val=75),
    )
    good = probe_classification(zs[0], ls[0], zs[1], ls[1], zs[2], ls[2])
    bad = probe_classification(ns[0], ls[0], ns[1], ls[1], ns[2], ls[2])
    assert good["accuracy"] > 0.95 and good["balanced_accuracy"] > 0.95
    assert bad["accuracy"] < 0.55 and bad["balanced_accuracy"] < 0.55
    fit = fit_logistic_probe(zs[0], ls[0], zs[1], ls[1], zs[2])
    assert fit.param == min(fit.val_loss, key=fit.val_loss.get)
    assert set(np.unique(fit.pred_test)) <= {0, 1, 2}


def test_boosting_probe_finds_a_nonlinear_property():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 4))
    y = np.abs(z[:, 0]) + 0.05 * rng.normal(size=500)  # no linear signal at all
    cls = (np.abs(z[:, 1]) > 0.7).astype(int)
    (zs, ys, cs) = _split(z, y, cls, n_train=300, n_val=100)
    boost = probe_boosting(zs[0], ys[0], zs[1], ys[1], zs[2], ys[2], seed=0)
    ridge = probe_regression(zs[0], ys[0], zs[1], ys[1], zs[2], ys[2])
    assert boost["r2"] > 0.85 and ridge["r2"] < 0.1
    assert 1 <= boost["n_trees"] <= 300
    clf = probe_boosting(zs[0], cs[0], zs[1], cs[1], zs[2], cs[2], categorical=True)
    assert clf["accuracy"] > 0.9
    fit = fit_boosting_probe(zs[0], ys[0], zs[1], ys[1], zs[2], seed=0)
    assert fit.param == min(fit.val_loss, key=fit.val_loss.get)


def test_probe_table_rows_and_constant_targets(planted):
    reps, targets = _table_inputs(planted, "prop", "cat", "one_activation", "flat", "absent")
    df = probe_table(reps, targets, {"cat", "one_activation"}, boosting=["latent"])
    assert list(df.columns) == PROBE_COLUMNS
    # targets x (latent linear + latent boosting + noise linear) x 2 metrics, plus chance rows:
    # accuracy and balanced accuracy, or R² alone (Kendall's tau of a constant is undefined)
    assert len(df) == 5 * 3 * 2 + 2 * 2 + 3 * 1
    assert set(df["probe"]) == {"constant", "ridge", "logistic", "boosting"}
    ok = df["note"] == ""
    assert set(df.loc[ok, "target"]) == {"prop", "cat"} and np.isfinite(df.loc[ok, "value"]).all()
    assert set(df.loc[df["target"] == "one_activation", "note"]) == {"constant"}
    assert set(df.loc[df["target"] == "flat", "note"]) == {"constant"}
    assert set(df.loc[df["target"] == "absent", "note"]) == {"missing"}
    assert df.loc[~ok, "value"].isna().all()

    def value(rep, probe, target, metric):
        sel = df[(df.representation == rep) & (df.probe == probe) & (df.target == target)]
        return float(sel.loc[sel.metric == metric, "value"].iloc[0])

    assert (
        value("latent", "ridge", "prop", "r2") > 0.99 > 0.1 > value("noise", "ridge", "prop", "r2")
    )
    assert value("latent", "logistic", "cat", "accuracy") > 0.95
    assert value("chance", "constant", "prop", "r2") <= 0.0 + 1e-2
    assert abs(value("chance", "constant", "cat", "balanced_accuracy") - 1 / 3) < 1e-9
    table = format_table(df)
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "target"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "target",
        "metric",
        "chance",
        "latent linear",
        "latent boosting",
        "noise linear",
    ]
    assert len(lines) == 2 + len(targets)
    row = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert "constant" in row["one_activation"] and "missing" in row["absent"]
    assert "R²" in row["prop"] and "acc" in row["cat"]


def test_compare_probes_finds_the_better_probe_and_resamples_members():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.normal(size=n)
    good, bad = y + 0.3 * rng.normal(size=n), y + 1.0 * rng.normal(size=n)
    mask = np.ones(n, dtype=bool)
    pred = {
        ("latent", "ridge", "t"): (mask, good),
        ("stats", "ridge", "t"): (mask, bad),
        ("pca", "ridge", "t"): (mask, good.copy()),
        ("stats", "boosting", "t"): (mask, good),  # another family: not compared
    }
    comp = compare_probes(pred, {"t": y}, np.arange(n), seed=1).set_index("baseline")
    assert list(comp.index) == ["stats", "pca"]
    assert comp.loc["stats", "verdict"] == "better" and comp.loc["stats", "ci_low"] > 0
    assert comp.loc["stats", "ours"] == pytest.approx(
        1 - ((y - good) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    )
    assert comp.loc["pca", "verdict"] == "tied" and comp.loc["pca", "difference"] == 0
    swapped = compare_probes(pred, {"t": y}, np.arange(n), subject="stats", seed=1)
    assert swapped.set_index("baseline").loc["latent", "verdict"] == "worse"

    # Four copies of every row, one member each: the member bootstrap sees 200 members, not
    # 800 independent rows, so the interval is as wide as for the rows alone.
    near = {
        ("latent", "ridge", "t"): (mask, good),
        ("stats", "ridge", "t"): (mask, good + 0.1 * rng.normal(size=n)),
    }
    once = compare_probes(near, {"t": y}, np.arange(n), seed=2).iloc[0]
    rep = {k: (np.tile(m, 4), np.tile(p, 4)) for k, (m, p) in near.items()}
    by_member = compare_probes(rep, {"t": np.tile(y, 4)}, np.tile(np.arange(n), 4), seed=2).iloc[0]
    by_row = compare_probes(rep, {"t": np.tile(y, 4)}, np.arange(4 * n), seed=2).iloc[0]
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(by_member) == pytest.approx(width(once), rel=0.25)
    assert width(by_row) < 0.7 * width(by_member)
    table = format_comparisons(compare_probes(pred, {"t": y}, np.arange(n)))
    assert "better" in table.splitlines()[2] and table.splitlines()[0].startswith("| target")


def test_probe_table_rejects_misaligned_rows(planted):
    z, _, y, _ = planted
    reps = {"latent": (z[:10], z[10:20], z[20:30])}
    with pytest.raises(ValueError, match="latent"):
        probe_table(reps, {"y": (y[:11], y[11:20], y[20:30])})


# --------------------------------------------------------------------------- reconstruction
@pytest.fixture(scope="module")
def trained(api_zoo_path):
    """The API zoo's 12 members after 3 epochs, and their spec."""
    zoo = Zoo.open(api_zoo_path)
    return zoo.weights(3), zoo.spec


def test_reconstruction_of_identical_networks_is_perfect(trained, digits):
    params, spec = trained
    m = reconstruction_metrics(params, {k: v.clone() for k, v in params.items()}, spec, digits)
    r2 = {k: v for k, v in m.items() if k.startswith("r2/")}
    assert set(r2) == {f"r2/{k}" for k in spec.param_shapes()}
    assert all(v == 1.0 for v in r2.values()) and m["r2_mean"] == 1.0
    assert m["agreement"] == 1.0 and m["acc_retention"] == 1.0 and m["output_mse"] == 0.0
    assert m["orig_acc"] == m["recon_acc"] > 0.5  # trained on digits: well above chance
    assert m["acc_kendall_tau"] > 0.99 and m["n_networks"] == 12


def test_reconstruction_degrades_with_perturbation(trained, digits):
    params, spec = trained
    gen = torch.Generator().manual_seed(0)
    results = []
    for scale in (0.1, 1.0):
        noisy = {
            k: v + scale * v.std() * torch.randn(v.shape, generator=gen) for k, v in params.items()
        }
        results.append(reconstruction_metrics(params, noisy, [spec] * 12, digits))  # per member
    small, large = results
    assert 0.9 < small["r2_mean"] < 1.0 and large["r2_mean"] < small["r2_mean"]
    assert small["agreement"] > large["agreement"] and large["agreement"] < 0.9
    assert large["acc_retention"] < small["acc_retention"] <= 1.02
    assert large["recon_acc"] < large["orig_acc"] and large["output_mse"] > small["output_mse"]
    # Decoding every network to the mean network explains none of the variance.
    mean = {k: v.mean(0, keepdim=True).expand_as(v) for k, v in params.items()}
    m = reconstruction_metrics(params, mean, spec, digits)
    assert all(abs(v) < 1e-9 for k, v in m.items() if k.startswith("r2/"))


def test_reconstruction_with_mixed_activations_and_chunks(trained, digits):
    params, spec = trained
    tanh = MLPSpec(spec.widths, "tanh", spec.bias)
    specs = [spec] * 6 + [tanh] * 6  # one spec per network
    half = {k: v[:6] for k, v in params.items()}
    mixed = reconstruction_metrics(params, params, specs, digits)
    relu_half = reconstruction_metrics(half, half, spec, digits)
    tanh_half = reconstruction_metrics(
        {k: v[6:] for k, v in params.items()}, {k: v[6:] for k, v in params.items()}, tanh, digits
    )
    assert mixed["agreement"] == 1.0
    assert mixed["orig_acc"] == pytest.approx((relu_half["orig_acc"] + tanh_half["orig_acc"]) / 2)
    # Networks run in chunks (here one network at a time): the same numbers.
    gen = torch.Generator().manual_seed(1)
    noisy = {k: v + 0.3 * v.std() * torch.randn(v.shape, generator=gen) for k, v in params.items()}
    whole = reconstruction_metrics(params, noisy, specs, digits)
    chunked = reconstruction_metrics(params, noisy, specs, digits, budget=1)
    assert chunked == pytest.approx(whole, rel=1e-6)
    with pytest.raises(ValueError, match="specs"):
        reconstruction_metrics(params, params, specs[:3], digits)


# --------------------------------------------------------------------------- generation
def test_gaussian_density_samples_have_the_fitted_moments():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(3, 3))
    z = rng.normal(size=(500, 3)) @ a + np.array([1.0, -2.0, 0.5])
    dens = fit_latent_density(z, "gaussian")
    np.testing.assert_allclose(dens.mean, z.mean(0))
    np.testing.assert_allclose(dens.cov, np.cov(z, rowvar=False))
    s = dens.sample(40_000, seed=1)
    assert s.shape == (40_000, 3)
    np.testing.assert_allclose(s.mean(0), dens.mean, atol=0.05)
    np.testing.assert_allclose(np.cov(s, rowvar=False), dens.cov, atol=0.1 * np.abs(dens.cov).max())
    np.testing.assert_array_equal(s, dens.sample(40_000, seed=1))
    assert not np.array_equal(s, dens.sample(40_000, seed=2))


def test_density_on_the_top_fraction_and_singular_and_kde():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(20, 5))
    acc = np.linspace(0.0, 1.0, 20)
    acc[3] = np.nan
    dens = fit_latent_density(z, "gaussian", accuracy=acc, fraction=0.3)
    np.testing.assert_array_equal(dens.selected, [19, 18, 17, 16, 15, 14])  # ceil(0.3 * 19)
    np.testing.assert_array_equal(top_fraction(acc, 0.01), [19])
    # 3 points span a plane: the covariance is singular and the samples stay in the plane.
    few = fit_latent_density(z[:3], "gaussian")
    s = few.sample(100)
    basis = np.linalg.svd(z[:3] - z[:3].mean(0))[2][:2]
    resid = (s - few.mean) - (s - few.mean) @ basis.T @ basis
    assert np.abs(resid).max() < 1e-6
    kde = fit_latent_density(z, "kde", bandwidth=1e-6)
    s = kde.sample(50)
    assert nearest_neighbour_distances(s, z).max() < 1e-4  # centred on the fitted points
    scott = fit_latent_density(z, "kde")
    assert math.isclose(scott.bandwidth, 20 ** (-1 / 9))
    with pytest.raises(ValueError, match="kind"):
        fit_latent_density(z, "flow")
    with pytest.raises(ValueError, match="2 points"):
        fit_latent_density(z[:1])


def test_nearest_neighbours_skip_the_own_group():
    ref = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.0, 0.2]])
    groups = np.array([0, 0, 1, 1])  # two checkpoints per member
    d = nearest_neighbour_distances(ref, ref, groups, groups)
    np.testing.assert_allclose(d, [5.0, 4.9, 4.9, math.hypot(4.9, 0.2)])
    d_self = nearest_neighbour_distances(ref, ref, np.arange(4), np.arange(4))
    np.testing.assert_allclose(d_self, [0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose(nearest_neighbour_distances([[0.0, 1.0]], ref), [1.0])


def test_a_generator_that_copies_its_training_set_is_flagged():
    rng = np.random.default_rng(8)
    train = rng.normal(size=(200, 30)).astype(np.float32)
    groups = np.arange(200) // 2  # two checkpoints per member ...
    train[1::2] = train[::2] + 0.01 * rng.normal(size=(100, 30))  # ... nearly identical
    acc = rng.uniform(0.8, 0.9, size=200)
    copies = generation_metrics(train[rng.integers(0, 200, 64)], train, acc[:64], acc, groups)
    assert copies["nn_median"] < 1e-5 and copies["copy_fraction"] == 1.0
    assert copies["copies_training_set"] == 1.0
    fresh = generation_metrics(rng.normal(size=(64, 30)), train, acc[:64], acc, groups)
    assert fresh["copy_fraction"] == 0.0 and fresh["copies_training_set"] == 0.0
    assert 0.7 < fresh["nn_ratio"] < 1.3  # as far from the zoo as its members from each other
    # Without groups the zoo's "spread" is the distance between checkpoints of one member.
    naive = generation_metrics(rng.normal(size=(64, 30)), train, acc[:64], acc)
    assert naive["zoo_nn_median"] < 0.1 * fresh["zoo_nn_median"]
    assert math.isclose(copies["zoo_acc_median"], float(np.median(acc)))
    assert math.isclose(copies["sample_acc_q75"], float(np.quantile(acc[:64], 0.75)))


# --------------------------------------------------------------------------- end to end
class PCAModel:
    """A linear 'autoencoder': the top principal directions of the training vectors."""

    def __init__(self, x: torch.Tensor, k: int):
        self.mean = x.mean(0)
        self.v = torch.linalg.svd(x - self.mean, full_matrices=False)[2][:k]  # (k, D)

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        return (w - self.mean) @ self.v.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.v + self.mean


@pytest.fixture(scope="module")
def datamodule(api_zoo_path):
    dm = WeightDataModule(api_zoo_path, batch_size=8)
    dm.setup()
    return dm


def test_load_split_is_independent_of_the_representation(datamodule, api_zoo_path):
    flat = load_split(datamodule, "test")
    tokens = WeightDataModule(api_zoo_path, representation="tokens")
    tokens.setup()
    tok = load_split(tokens, "test")
    torch.testing.assert_close(tok.weights, flat.weights)
    batch = datamodule.dataset("test").__getitems__(list(range(len(flat))))
    torch.testing.assert_close(flat.weights, batch["weights"])
    assert len(flat) == len(flat.specs) == len(flat.groups) == 6  # 2 members x 3 checkpoints
    sub = load_split(datamodule, "train", max_items=5, seed=1)
    assert len(sub) == 5 and sub.weights.shape == (5, datamodule.n_params)


def test_probe_targets_logs_and_categories(datamodule):
    items = [load_split(datamodule, s).items for s in ("train", "val", "test")]
    targets, categorical = probe_targets(items)
    assert {"test_acc", "epoch", "generalization_gap", "log_lr", "log_weight_decay"} <= set(targets)
    assert categorical == {"init", "activation", "optimizer"} & set(targets)
    lr = np.concatenate(targets["log_lr"])
    np.testing.assert_allclose(np.unique(lr), np.log10([0.02, 0.1]), rtol=1e-6)
    (wd,) = probe_targets(
        [pd.DataFrame({"weight_decay": [0.0, 1e-4, 1e-2]})] * 3, ["weight_decay"]
    )[0].values()
    np.testing.assert_allclose(wd[0], np.log10([5e-5, 1.5e-4, 1e-2 + 5e-5]))


def test_invariants_reference_carries_what_the_model_reads(datamodule, digits, monkeypatch):
    """A model that reads the product spectra and the function features gets a reference
    of the same features, on the model's own probe inputs."""
    model = PCAModel(load_split(datamodule, "train").weights, 3)
    model.probe_inputs, model.probe_targets = digits.x_train[:32], digits.y_train[:32]
    # What the model reads, as it says itself (WeightAutoencoder.invariant_features).
    model.invariant_features = lambda params: FeatureSpec(True, True, True).compute(
        params, datamodule.spec, (model.probe_inputs, model.probe_targets)
    )
    seen = {}

    def spy(reps, *args, **kwargs):
        seen.update(reps)
        return probe_table(reps, *args, **kwargs)

    monkeypatch.setattr("weightspace.evaluation.evaluate.probe_table", spy)
    evaluate_autoencoder(model, datamodule, digits, n_samples=4, boosting=False)
    spec, test = datamodule.spec, load_split(datamodule, "test")
    probe = (model.probe_inputs, model.probe_targets)
    assert seen["invariants"][2].shape[1] == FeatureSpec(True, True, True).width(spec)
    np.testing.assert_allclose(
        seen["invariants"][2], FeatureSpec(True, True, True).compute(test.params, spec, probe)
    )
    np.testing.assert_allclose(seen["stats"][2], layer_statistics(test.params, spec))


def test_an_encoder_reading_probe_values_is_compared_with_those_values(
    datamodule, digits, monkeypatch
):
    """An encoder with probe features (``encoder.probe_x``) reads part of the function: the
    evaluation adds the networks' outputs on those inputs ("probed") as a representation and
    compares the latent and the learned coordinates with it; without them, no such row."""
    model = PCAModel(load_split(datamodule, "train").weights, 3)
    seen = {}

    def spy(reps, *args, **kwargs):
        seen.update(reps)
        return probe_table(reps, *args, **kwargs)

    monkeypatch.setattr("weightspace.evaluation.evaluate.probe_table", spy)
    res = evaluate_autoencoder(model, datamodule, digits, n_samples=4, boosting=False)
    assert "probed" not in seen and "probed" not in set(res["probes"].representation)
    model.encoder = torch.nn.Module()
    model.encoder.register_buffer("probe_x", digits.x_train[:5].float())
    res = evaluate_autoencoder(model, datamodule, digits, n_samples=4, boosting=False)
    spec, test = datamodule.spec, load_split(datamodule, "test")
    outputs = forward(
        {k: v.double() for k, v in test.params.items()}, digits.x_train[:5].double(), spec
    )
    np.testing.assert_allclose(seen["probed"][2], outputs.flatten(1).numpy())
    assert seen["probed"][2].shape == (len(test.weights), 5 * spec.widths[-1])
    assert "probed" in set(res["probes"].representation)
    assert "probed" in set(res["comparisons"].baseline)


def test_evaluate_autoencoder_end_to_end(datamodule, digits, tmp_path):
    train = load_split(datamodule, "train")
    model = PCAModel(train.weights, 4)
    res = evaluate_autoencoder(
        model, datamodule, digits, latent_dim=4, n_samples=16, boosting=("latent", "stats")
    )
    probes = res["probes"]
    ok = probes["note"] == ""
    assert (
        ok.any()
        and np.isfinite(probes.loc[ok & probes.metric.isin(["r2", "accuracy"]), "value"]).all()
    )
    # The zoo has one activation, optimizer and init and no weight decay: noted, not fitted.
    noted = probes.loc[~ok].groupby("target")["note"].first().to_dict()
    for name in ("activation", "optimizer", "init", "log_weight_decay"):
        assert noted[name] == "constant"
    reps = set(probes["representation"])
    assert reps == {"chance", "latent", "stats", "invariants", "raw", "pca"}
    assert set(probes.loc[probes.probe == "boosting", "representation"]) == {"latent", "stats"}
    # The fake model *is* the PCA of the same width: its linear probes match the PCA's.
    lin = probes[probes.probe.isin(["ridge", "logistic"]) & ok].set_index(["target", "metric"])
    lat, pca = lin[lin.representation == "latent"], lin[lin.representation == "pca"]
    np.testing.assert_allclose(lat["value"], pca.loc[lat.index, "value"], atol=1e-6)
    # Epoch 0 / 1 / 3 checkpoints: the accuracy is readable from per-layer statistics.
    stats = lin[lin.representation == "stats"]
    assert stats.loc[("test_acc", "r2"), "value"] > 0.2

    rec = res["reconstruction"]
    epochs = sorted(set(datamodule.dataset("test").items["epoch"]))
    per_epoch = [f"{m} epoch {e}" for m in ("autoencoder", "pca") for e in epochs]
    assert list(rec.index) == [
        "autoencoder",
        *per_epoch[: len(epochs)],
        "pca",
        *per_epoch[len(epochs) :],
    ]
    np.testing.assert_allclose(rec.loc["autoencoder"], rec.loc["pca"], rtol=1e-4, atol=1e-4)
    # The per-epoch rows split the overall one: counts add up, accuracies average back.
    rows = rec.loc[per_epoch[: len(epochs)]]
    assert (
        rows["epoch"].tolist() == epochs
        and rows["n_networks"].sum() == rec.loc["autoencoder", "n_networks"]
    )
    weighted = (rows["orig_acc"] * rows["n_networks"]).sum() / rows["n_networks"].sum()
    assert weighted == pytest.approx(rec.loc["autoencoder", "orig_acc"])
    # 4 directions from 8 training members cannot hold 2 unseen members' own random inits.
    assert rec.loc["pca", "r2_normalized"] < 0.5 and rec.loc["pca", "agreement"] < 0.9
    assert rec.loc["pca", "recon_acc"] < rec.loc["pca", "orig_acc"]

    gen = res["generation"]
    assert gen["n_fit"] == 8 and gen["activation"] == "relu"  # ceil(0.3 * 24)
    assert gen["n_samples"] == 16 and 0 <= gen["sample_acc_median"] <= 1
    assert gen["fit_acc_median"] >= gen["zoo_acc_median"]
    assert gen["copies_training_set"] == 0.0 and gen["nn_median"] > 0
    info = res["info"]
    assert info["latent_dim"] == info["pca_components"] == 4
    assert (info["n_members/train"], info["n_members/val"], info["n_members/test"]) == (8, 2, 2)

    lines = res["table"].splitlines()
    assert "latent linear" in lines[0] and "stats boosting" in lines[0]
    assert any(line.startswith("| test_acc") for line in lines)

    paths = write_results(res, tmp_path / "eval")
    data = json.loads(paths["json"].read_text())  # strict JSON: NaN written as null
    assert set(data) == {"info", "reconstruction", "generation", "probes", "comparisons"}
    comp = pd.read_csv(paths["comparisons"])
    assert set(comp["baseline"]) == {"stats", "invariants", "raw", "pca"}
    assert set(comp["verdict"].dropna()) <= {"better", "worse", "tied", TOO_FEW}
    assert len(comp) == len(res["comparisons"]) > 0
    assert data["reconstruction"]["pca"]["n_networks"] == 6
    assert any(row["value"] is None for row in data["probes"])
    back = pd.read_csv(paths["probes"], keep_default_na=False)
    assert len(back) == len(probes)
    assert paths["table"].read_text().strip() == res["table"]

    with pytest.raises(ValueError, match="latent_dim"):
        evaluate_autoencoder(model, datamodule, digits, latent_dim=5, n_samples=4)


# --------------------------------------------------------------------------- results, scores
def test_results_save_load_round_trip_and_summary_without_parsing(planted, tmp_path):
    """EvalResults.load reads back what save wrote (saving it again gives the same bytes),
    and the probe table's cells come from probes.csv, never from table.md."""
    reps, targets = _table_inputs(planted, "prop", "cat", "flat")
    pred: dict = {}
    probes = probe_table(reps, targets, {"cat"}, boosting=False, predictions=pred)
    y_test = {t: np.asarray(v[2]) for t, v in targets.items()}
    comparisons = compare_probes(pred, y_test, np.arange(75), {"cat"}, n_boot=50)
    rec = pd.DataFrame(
        {"epoch": [math.nan, 1.0], "r2_mean": [0.5, 1 / 3], "orig_acc": [math.nan, 0.9]},
        index=["autoencoder", "autoencoder epoch 1"],
    )
    gen = {"density": "gaussian", "n_fit": 8, "nn_ratio": math.nan, "copy_fraction": 0.125}
    res = EvalResults(probes, rec, comparisons, gen, {"task": "digits", "latent_dim": 4})
    assert res["probes"] is probes and res.get("table") == format_table(probes)
    assert list(res) == ["probes", "table", "comparisons", "reconstruction", "generation", "info"]

    paths = res.save(tmp_path / "a")
    back = EvalResults.load(tmp_path / "a")
    again = back.save(tmp_path / "b")
    for name, path in paths.items():
        assert path.read_bytes() == again[name].read_bytes(), name
    pd.testing.assert_frame_equal(back.probes, probes)
    pd.testing.assert_frame_equal(back.reconstruction, rec)
    assert back.generation["n_fit"] == 8 and math.isnan(back.generation["nn_ratio"])
    assert write_results(dict(res), tmp_path / "c")["json"].read_bytes() == (
        paths["json"].read_bytes()
    )

    summary = back.probe_summary()
    lines = paths["table"].read_text().splitlines()
    assert list(summary.columns) == [c.strip() for c in lines[0].strip("|").split("|")]
    for row, line in zip(summary.itertuples(index=False), lines[2:]):
        assert list(row) == [c.strip() for c in line.strip().strip("|").split("|")]
    assert summary.set_index("target").loc["flat", "latent linear"] == "constant"
    assert not EvalResults.is_saved(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        EvalResults.load(tmp_path / "nowhere")


def test_one_r2_for_targets_tensors_and_flat_vectors():
    """scores.r2 computes what the three former R² functions did, to the last bit: a 1-D
    target (numpy), stacked tensors (torch, summed by torch) and flat vectors (numpy)."""
    rng = np.random.default_rng(3)
    y, p = rng.normal(size=37), rng.normal(size=37)
    sst, sse = float(((y - y.mean()) ** 2).sum()), float(((y - p) ** 2).sum())
    assert r2(y, p) == 1.0 - sse / sst
    o, d = torch.randn(9, 5, 7, dtype=torch.float64), torch.randn(9, 5, 7, dtype=torch.float64)
    sse, sst = float(((o - d) ** 2).sum()), float(((o - o.mean(0)) ** 2).sum())
    assert r2(o, d) == 1.0 - sse / sst
    a, b = o.numpy().reshape(9, -1), d.numpy().reshape(9, -1)
    sst, sse = float(((a - a.mean(0)) ** 2).sum()), float(((a - b) ** 2).sum())
    assert r2(a, b) == 1.0 - sse / sst
    assert r2(np.ones(4), np.ones(4)) == 1.0 and math.isnan(r2(np.ones(4), np.zeros(4)))
