"""The memorization audit of generation: its baselines, novelties, score and its place in the
evaluation (weightspace.evaluation.audit)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation import evaluate_autoencoder
from weightspace.evaluation.audit import (
    AuditOptions,
    audit_score,
    average_baseline,
    noise_baseline,
    novelty,
    predictions,
)
from weightspace.evaluation.results import EvalResults
from weightspace.evaluation.splits import load_split, to_params


@pytest.fixture(autouse=True, scope="module")
def _single_threaded():
    with threadpool_limits(1):
        yield


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


SMALL = AuditOptions(
    n_per_level=8, noise_scales=(0.0, 0.3, 1.0), ks=(2, 3), temperatures=(0.5, 1.0), n_boot=50
)


def test_noise_zero_is_the_checkpoint_at_novelty_zero(datamodule, digits):
    train = load_split(datamodule, "train")
    rng = np.random.default_rng(0)
    noisy, knob = noise_baseline(train.weights, (0.0, 0.5), 6, rng)
    assert noisy.shape == (12, train.weights.shape[1]) and knob.tolist() == [0.0] * 6 + [0.5] * 6
    spec = train.specs[0]
    pred = predictions(to_params(noisy, datamodule, spec), spec, digits.x_test)
    ref = predictions(train.params, train.specs, digits.x_test)
    d, f, nn = novelty(noisy, pred, train.weights, ref)
    # Scale 0: rows of the training set themselves, at distance 0, predicting alike.
    torch.testing.assert_close(noisy[:6], train.weights[torch.from_numpy(nn[:6])], rtol=0, atol=0)
    assert (d[:6] == 0).all() and (f[:6] == 0).all()
    assert (d[6:] > 0).all()  # scale 0.5 moves every network
    # Noise is per-tensor scaled: in the normalized space its std is the scale.
    assert (noisy[6:] - train.weights[torch.from_numpy(nn[6:])]).std().item() == pytest.approx(
        0.5, rel=0.1
    )


def test_average_of_copies_is_the_network_and_k_is_respected():
    rng = np.random.default_rng(0)
    one = torch.randn(1, 20).repeat(5, 1)  # 5 copies of one network
    avg, knob = average_baseline(one, (2, 3, 5, 6), 4, rng)
    assert knob.tolist() == [2.0] * 4 + [3.0] * 4 + [5.0] * 4  # k = 6 > 5 rows: skipped
    torch.testing.assert_close(avg, one[:1].expand(12, -1))
    x = torch.eye(4)
    avg, _ = average_baseline(x, (4,), 3, rng)
    torch.testing.assert_close(avg, torch.full((3, 4), 0.25))  # k distinct rows, all of them


def test_score_sign_on_a_constructed_case():
    """Samples 0.05 more accurate than both baselines at every novelty score about +0.05,
    with an interval above 0; 0.05 less, about -0.05, below 0."""
    rng = np.random.default_rng(1)
    f = rng.uniform(0, 0.3, 400)
    noise = (f, 0.95 - f)  # accuracy falls as novelty grows
    average = (f, 0.93 - f)
    fs = rng.uniform(0.05, 0.25, 200)
    better = audit_score((fs, 1.0 - fs), {"noise": noise, "average": average}, n_boot=200)
    worse = audit_score((fs, 0.90 - fs), {"noise": noise, "average": average}, n_boot=200)
    assert better["score"] == pytest.approx(0.05, abs=0.01) and better["ci_low"] > 0
    assert worse["score"] == pytest.approx(-0.05, abs=0.01) and worse["ci_high"] < 0
    assert better["bins_won"] == 1.0 and worse["bins_won"] == 0.0
    assert better["bins_covered"] == better["bins"] == 8
    # A baseline with fewer than min_count networks in a bin does not count there.
    sparse = audit_score((fs, 1.0 - fs), {"noise": (f[:3], f[:3])}, n_boot=0)
    assert sparse["bins_covered"] == 0 and np.isnan(sparse["score"])


@pytest.mark.slow
def test_audit_runs_in_a_small_evaluation_and_changes_nothing_else(datamodule, digits, tmp_path):
    model = PCAModel(load_split(datamodule, "train").weights, 4)
    kw = dict(task=digits, latent_dim=4, n_samples=16, boosting=("latent",))
    plain = evaluate_autoencoder(model, datamodule, **kw)
    res = evaluate_autoencoder(model, datamodule, **kw, audit=SMALL)
    # The audit draws from its own stream: every other number is as without it.
    pd.testing.assert_frame_equal(res.probes, plain.probes)
    pd.testing.assert_frame_equal(res.comparisons, plain.comparisons)
    pd.testing.assert_frame_equal(res.reconstruction, plain.reconstruction)
    assert json.dumps(res.generation) == json.dumps(plain.generation)
    assert plain.audit == {} and plain.audit_points is None

    pts, audit = res.audit_points, res.audit
    counts = pts.groupby(["method", "knob"]).size().to_dict()
    assert counts == {
        ("samples", 0.5): 8,
        ("samples", 1.0): 16,  # the generation's own samples
        ("noise", 0.0): 8,
        ("noise", 0.3): 8,
        ("noise", 1.0): 8,
        ("average", 2.0): 8,
        ("average", 3.0): 8,
    }
    noise0 = pts[(pts.method == "noise") & (pts.knob == 0.0)]
    assert (noise0.novelty == 0).all() and (noise0.func_novelty == 0).all()
    s1 = pts[(pts.method == "samples") & (pts.knob == 1.0)]
    assert s1["acc"].median() == pytest.approx(res.generation["sample_acc_median"])
    assert ((pts.func_novelty >= 0) & (pts.func_novelty <= 1)).all()
    assert (pts.heldout_novelty > 0).all()  # no audited network is a held-out member
    assert audit["n_samples"] == 16 and np.isfinite(audit["sample_heldout_novelty_median"])
    assert {"score", "ci_low", "ci_high", "weight_score", "closer_to_heldout"} <= set(audit)

    paths = res.save(tmp_path / "a")
    assert paths["audit_figure"].stat().st_size > 0
    assert json.loads(paths["json"].read_text())["audit"]["n_samples"] == 16
    back = EvalResults.load(tmp_path / "a")
    pd.testing.assert_frame_equal(back.audit_points, pts, check_dtype=False)
    again = back.save(tmp_path / "b")
    for name in ("json", "audit"):
        assert paths[name].read_bytes() == again[name].read_bytes(), name
    assert "Memorization audit" in res.summary(tmp_path)
