"""Feature families (``scripts/probe_features.py``): which survive the function-preserving
symmetries, and the probe table over a zoo's checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, run_cli

from weightspace.analysis.feature_families import FAMILIES, feature_families, probe_families
from weightspace.errors import ConfigError
from weightspace.nets.spec import MLPSpec, weight_name
from weightspace.symmetry import (
    apply_permutation,
    mlp_permutation_spec,
    perm_name,
    random_permutations,
    rescale_units,
)
from weightspace.zoo.store import Zoo

# A family is invariant to a symmetry, or not, by what it reads:
RESCALING_INVARIANT = {
    "stats (canonical)",
    "spectra (canonical)",
    "product spectra (canonical)",
    "angles",
}


def random_params(spec: MLPSpec, n: int = 6):
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(n, *s, generator=gen) for k, s in spec.param_shapes().items()}


def test_which_families_survive_permutations_and_relu_rescaling():
    spec = MLPSpec((7, 6, 5, 3), "relu")
    params = random_params(spec)
    gen = torch.Generator().manual_seed(1)
    ps = mlp_permutation_spec(spec)
    permuted = apply_permutation(ps, random_permutations(ps, 6, gen), params)
    factors = {
        perm_name(l): torch.rand(6, w, generator=gen) * 4 + 0.25 for l, w in enumerate((6, 5))
    }
    rescaled = rescale_units(params, spec, factors)
    base = feature_families(params, spec)
    assert set(base) == set(FAMILIES)
    for name, x in feature_families(permuted, spec).items():  # every family: a permutation
        torch.testing.assert_close(x, base[name], rtol=1e-6, atol=1e-8)
    moved = feature_families(rescaled, spec)
    for name in FAMILIES:
        same = torch.allclose(moved[name], base[name], rtol=1e-6, atol=1e-8)
        assert same == (name in RESCALING_INVARIANT), name


def test_balance_is_the_log_ratio_of_incoming_to_outgoing_norms():
    spec = MLPSpec((4, 3, 2), "relu", bias=False)
    params = random_params(spec, n=1)
    params[weight_name(0)] = torch.tensor([[[1.0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 4.0]]])
    params[weight_name(1)] = torch.tensor([[[1.0, 1.0, 1.0], [0, 0, 0]]])  # outgoing norms 1
    ratios = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).log()  # incoming / outgoing
    expected = torch.quantile(ratios, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]).double())
    torch.testing.assert_close(feature_families(params, spec)["balance"][0], expected)


def test_probe_table_over_the_zoo_and_its_errors(api_zoo_path):
    zoo = Zoo.open(api_zoo_path)
    table = probe_families(zoo, "lr", folds=3, log=True)  # two learning rates, numeric
    assert table.family.tolist()[: len(FAMILIES)] == list(FAMILIES)
    assert (table.metric == "r2").all() and table.score.notna().all()
    assert table.set_index("family").loc["stats", "features"] == 16 * zoo.spec.n_layers
    with pytest.raises(ConfigError, match=r"^--target: 'nope' is not a column of .*members"):
        probe_families(zoo, "nope")
    with pytest.raises(ConfigError, match=r"^--folds: 1, must be in \[2, 12\]"):
        probe_families(zoo, "lr", folds=1)
    with pytest.raises(ConfigError, match=r"^--epochs: .* has no checkpoint at epoch\(s\) \[7\]"):
        probe_families(zoo, "lr", epochs=[7])


def test_entry_point_prints_the_table_or_one_line(api_zoo_path, tmp_path):
    script = REPO / "scripts" / "probe_features.py"
    out = run_cli(tmp_path, str(api_zoo_path), "--target", "lr", "--folds", "3", script=script)
    assert out.returncode == 0, out.stderr
    assert "| balance | " in out.stdout and "(r2)" in out.stdout
    bad = run_cli(tmp_path, str(tmp_path / "none"), script=script)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert "is not a finished zoo" in bad.stderr
