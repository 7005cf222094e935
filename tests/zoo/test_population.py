"""The members table: grid and random sampling, validation, and how members are sharded."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from conftest import compose_cfg

from weightspace.errors import ConfigError
from weightspace.zoo.generate import plan_shards
from weightspace.zoo.population import DEFAULT_HPARAMS, STATIC_KEYS, sample_population


def test_defaults_fill_every_column():
    df = sample_population({}, 5, seed=2)
    assert list(df["member_id"]) == list(range(5))
    for k, v in DEFAULT_HPARAMS.items():
        if k != "seed":
            assert (df[k] == v).all(), k
    assert list(df["seed"]) == [2_000_000 + i for i in range(5)]
    assert list(df["data_seed"]) == list(df["seed"])  # per_member data order by default
    assert df["seed"].dtype == df["batch_size"].dtype == df["epochs"].dtype == np.int64
    assert df["lr"].dtype == np.float64


def test_grid_covers_the_cartesian_product():
    lrs, inits, wds = [0.01, 0.03, 0.1], ["kaiming", "xavier"], [0.0, 1e-4]
    n_points = len(lrs) * len(inits) * len(wds)
    df = sample_population(
        {"lr": lrs, "init": inits, "weight_decay": wds, "momentum": 0.5}, 3 * n_points, seed=1
    )
    combos = list(zip(df["lr"], df["init"], df["weight_decay"]))
    assert set(combos) == set(itertools.product(lrs, inits, wds))
    assert all(combos.count(c) == 3 for c in set(combos))
    # Member i takes point i mod n_points: the first n_points members hold each point once.
    assert len(set(combos[:n_points])) == n_points
    assert combos[n_points:] == combos[:n_points] * 2
    assert df["seed"].is_unique
    assert (df["momentum"] == 0.5).all()


def test_grid_smaller_than_the_product_takes_the_first_points():
    df = sample_population({"lr": [0.1, 0.2, 0.3], "batch_size": [8, 16]}, 4)
    assert len(set(zip(df["lr"], df["batch_size"]))) == 4


def test_random_sampling_respects_the_distributions():
    hp = {
        "lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1},
        "init_scale": {"dist": "uniform", "low": 0.5, "high": 2.0},
        "init": {"dist": "choice", "values": ["xavier", "orthogonal"]},
        "weight_decay": [0.0, 1e-3, 1e-2],
    }
    df = sample_population(hp, 400, seed=5, sampling="random")
    assert df["lr"].between(1e-3, 1e-1).all()
    assert df["init_scale"].between(0.5, 2.0).all()
    assert set(df["init"]) == {"xavier", "orthogonal"}
    assert set(df["weight_decay"]) == {0.0, 1e-3, 1e-2}
    # loguniform: as many draws below the geometric midpoint (1e-2) as above it.
    below = (df["lr"] < 1e-2).mean()
    assert 0.4 < below < 0.6
    # uniform: as many below the arithmetic midpoint
    assert 0.4 < (df["init_scale"] < 1.25).mean() < 0.6


def test_distributions_are_sampled_per_member_under_grid_too():
    hp = {"lr": {"dist": "uniform", "low": 0.01, "high": 0.02}, "momentum": [0.0, 0.9]}
    df = sample_population(hp, 10, sampling="grid")
    assert df["lr"].nunique() == 10
    assert list(df["momentum"]) == [0.0, 0.9] * 5


def test_sampling_is_deterministic_and_seeded():
    hp = {"lr": {"dist": "loguniform", "low": 1e-3, "high": 1e-1}, "init": ["kaiming", "xavier"]}
    a = sample_population(hp, 20, seed=3, sampling="random")
    pd.testing.assert_frame_equal(a, sample_population(hp, 20, seed=3, sampling="random"))
    b = sample_population(hp, 20, seed=4, sampling="random")
    assert not np.array_equal(a["lr"], b["lr"])
    assert list(b["seed"]) == [4_000_000 + i for i in range(20)]


def test_a_prefix_of_a_larger_zoo_is_the_smaller_zoo():
    hp = {"lr": {"dist": "uniform", "low": 0.01, "high": 0.1}, "init": ["kaiming", "xavier"]}
    small = sample_population(hp, 6, seed=1)
    large = sample_population(hp, 12, seed=1)
    pd.testing.assert_frame_equal(small, large.iloc[:6].reset_index(drop=True))


def test_explicit_seed_and_shared_data_order():
    df = sample_population({"seed": [11, 12], "data_order": ["shared", "per_member"]}, 4, seed=9)
    assert list(df["seed"]) == [11, 11, 12, 12]
    assert list(df["data_order"]) == ["shared", "per_member"] * 2
    # Shared data order draws shuffles from the zoo seed; per_member from the member's.
    assert list(df["data_seed"]) == [9, 11, 9, 12]


def test_hydra_config_values_are_accepted():
    cfg = compose_cfg(
        "/nonexistent",
        "zoo.hparams.lr=[0.01,0.1]",
        "zoo.hparams.init_scale={dist:uniform,low:0.5,high:1.5}",
    )
    df = sample_population(cfg.zoo.hparams, 6, seed=0, sampling=cfg.zoo.sampling)
    assert list(df["lr"]) == [0.01, 0.1] * 3
    assert df["init_scale"].between(0.5, 1.5).all() and df["init_scale"].nunique() == 6


def test_unknown_hparam_is_named():
    with pytest.raises(ConfigError, match="learning_rate"):
        sample_population({"learning_rate": 0.1}, 4)


@pytest.mark.parametrize(
    "hparams, option",
    [
        ({"lr": -0.1}, "zoo.hparams.lr"),
        ({"lr": [0.1, 0.0]}, "zoo.hparams.lr"),
        ({"momentum": 1.0}, "zoo.hparams.momentum"),
        ({"weight_decay": -1e-4}, "zoo.hparams.weight_decay"),
        ({"batch_size": 0}, "zoo.hparams.batch_size"),
        ({"batch_size": 2.5}, "zoo.hparams.batch_size"),
        ({"epochs": 0}, "zoo.hparams.epochs"),
        ({"subset": 1.5}, "zoo.hparams.subset"),
        ({"subset": 0.0}, "zoo.hparams.subset"),
        ({"label_noise": 2.0}, "zoo.hparams.label_noise"),
        ({"init_std": -1.0}, "zoo.hparams.init_std"),
        ({"init_scale": math.inf}, "zoo.hparams.init_scale"),
        ({"init": "he"}, "zoo.hparams.init"),
        ({"bias_init": "ones"}, "zoo.hparams.bias_init"),
        ({"optimizer": "rmsprop"}, "zoo.hparams.optimizer"),
        ({"activation": ["relu", "swish"]}, "zoo.hparams.activation"),
        ({"data_order": "sorted"}, "zoo.hparams.data_order"),
        ({"lr": {"dist": "loguniform", "low": 0.0, "high": 1.0}}, "zoo.hparams.lr"),
        ({"lr": {"dist": "uniform", "low": 0.2, "high": 0.1}}, "zoo.hparams.lr"),
        ({"lr": {"dist": "uniform", "low": 0.2}}, "zoo.hparams.lr"),
        ({"lr": {"dist": "normal", "low": 0.1, "high": 0.2}}, "zoo.hparams.lr"),
        ({"init": {"dist": "choice", "values": []}}, "zoo.hparams.init"),
    ],
)
def test_bad_values_name_the_option(hparams, option):
    with pytest.raises(ConfigError) as err:
        sample_population(hparams, 4)
    msg = str(err.value)
    assert msg.startswith(option + ":")
    assert "\n" not in msg


def test_empty_list_under_random_sampling():
    with pytest.raises(ConfigError, match="zoo.hparams.lr: empty list"):
        sample_population({"lr": []}, 4, sampling="random")


def test_bad_size_and_sampling():
    with pytest.raises(ConfigError, match="zoo.size"):
        sample_population({}, 0)
    with pytest.raises(ConfigError, match="zoo.sampling"):
        sample_population({}, 4, sampling="sobol")


# --------------------------------------------------------------------------- shards
def _check_plan(plan: pd.DataFrame, shard_size: int) -> None:
    assert sorted(plan["member_id"]) == list(range(len(plan)))
    for _, rows in plan.groupby("shard"):
        assert 1 <= len(rows) <= shard_size
        assert sorted(rows["shard_row"]) == list(range(len(rows)))
        for k in STATIC_KEYS:  # one static key combination per shard
            assert rows[k].nunique() == 1, k
    assert sorted(plan["shard"].unique()) == list(range(plan["shard"].nunique()))


def test_plan_shards_separates_static_keys():
    members = sample_population({"batch_size": [16, 32], "lr": [0.01, 0.1]}, 10)
    plan = plan_shards(members, 3)
    _check_plan(plan, 3)
    # 5 members of each batch size -> shards of 3 and 2 for each.
    assert plan.groupby("shard").size().sort_values().tolist() == [2, 2, 3, 3]
    # The members table itself is unchanged apart from the two new columns.
    pd.testing.assert_frame_equal(plan.drop(columns=["shard", "shard_row"]), members)


@pytest.mark.parametrize("shard_size", [1, 4, 7, 100])
def test_plan_shards_with_several_static_keys(shard_size):
    members = sample_population(
        {"activation": ["relu", "tanh"], "optimizer": ["sgd", "adam"], "epochs": [1, 2, 3]},
        37,
        sampling="random",
    )
    plan = plan_shards(members, shard_size)
    _check_plan(plan, shard_size)
    n_groups = members.groupby(list(STATIC_KEYS)).ngroups
    expected = sum(math.ceil(len(g) / shard_size) for _, g in members.groupby(list(STATIC_KEYS)))
    assert plan["shard"].nunique() == expected >= n_groups


def test_plan_shards_rejects_zero_size():
    with pytest.raises(ConfigError, match="zoo.shard_size"):
        plan_shards(sample_population({}, 3), 0)
