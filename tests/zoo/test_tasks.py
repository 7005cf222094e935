import dataclasses
import math

import mnist1d.data
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from weightspace.errors import ConfigError, DataError
from weightspace.zoo.idx import write_idx
from weightspace.zoo.tasks import Task, load_task, task_summary

# name -> (extra config, n_train, n_test, input_dim, n_classes)
EMBEDDED = {
    "digits": ({}, 1437, 360, 64, 10),
    "blobs": ({}, 1600, 400, 2, 3),
    "moons": ({}, 1600, 400, 2, 2),
    "sine": ({}, 800, 200, 1, None),
    "mnist1d": ({"n_samples": 500}, 400, 100, 40, 10),
}
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _cfg(name: str, tmp_path, **extra) -> dict:
    return {"name": name, "data_dir": str(tmp_path), **EMBEDDED[name][0], **extra}


def _assert_tasks_equal(a: Task, b: Task) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.n_classes == b.n_classes


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_task_shapes_and_dtypes(name, tmp_path):
    _, n_train, n_test, input_dim, n_classes = EMBEDDED[name]
    task = load_task(_cfg(name, tmp_path))
    assert task.name == name
    assert task.x_train.shape == (n_train, input_dim)
    assert task.x_test.shape == (n_test, input_dim)
    assert task.x_train.dtype == task.x_test.dtype == torch.float32
    assert task.mean.shape == task.std.shape == (input_dim,)
    assert task.mean.dtype == task.std.dtype == torch.float32
    assert task.input_dim == input_dim
    assert task.n_classes == n_classes
    if n_classes is None:
        assert not task.is_classification
        assert task.output_dim == 1
        assert task.y_train.shape == (n_train, 1)
        assert task.y_test.shape == (n_test, 1)
        assert task.y_train.dtype == torch.float32
    else:
        assert task.is_classification
        assert task.output_dim == n_classes
        assert task.y_train.shape == (n_train,)
        assert task.y_test.shape == (n_test,)
        assert task.y_train.dtype == task.y_test.dtype == torch.int64
        assert set(task.y_train.tolist()) == set(range(n_classes))
    assert torch.isfinite(task.x_train).all() and torch.isfinite(task.x_test).all()


@pytest.mark.parametrize("name", EMBEDDED)
def test_same_config_gives_identical_tensors(name, tmp_path):
    _assert_tasks_equal(load_task(_cfg(name, tmp_path)), load_task(_cfg(name, tmp_path)))


@pytest.mark.parametrize("name", EMBEDDED)
def test_seed_changes_split(name, tmp_path):
    a = load_task(_cfg(name, tmp_path, seed=0, standardize=False))
    b = load_task(_cfg(name, tmp_path, seed=1, standardize=False))
    assert a.x_train.shape == b.x_train.shape
    assert not torch.equal(a.x_train, b.x_train)


def test_digits_split_is_a_stratified_partition_of_the_same_data():
    a = load_task({"name": "digits", "seed": 0, "standardize": False})
    b = load_task({"name": "digits", "seed": 1, "standardize": False})

    def rows(task: Task) -> list:
        return sorted(map(tuple, torch.cat([task.x_train, task.x_test]).tolist()))

    assert rows(a) == rows(b)
    train_share = torch.bincount(a.y_train) / len(a.y_train)
    test_share = torch.bincount(a.y_test) / len(a.y_test)
    assert torch.allclose(train_share, test_share, atol=0.01)


def test_standardization_uses_training_statistics_only():
    raw = load_task({"name": "digits", "standardize": False})
    task = load_task({"name": "digits"})
    assert torch.equal(raw.mean, torch.zeros(64)) and torch.equal(raw.std, torch.ones(64))
    assert torch.equal(raw.y_train, task.y_train) and torch.equal(raw.y_test, task.y_test)

    raw_train = raw.x_train.double()
    assert torch.allclose(task.mean.double(), raw_train.mean(0), atol=1e-5)
    varying = raw_train.std(0, correction=0) > 1e-6
    assert 0 < (~varying).sum() < 64  # digits has constant pixels, which get std 1
    assert torch.equal(task.std[~varying], torch.ones(int((~varying).sum())))
    assert torch.allclose(task.std[varying].double(), raw_train.std(0, correction=0)[varying])

    assert torch.allclose(task.x_train.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(task.x_train[:, varying].std(0, correction=0), torch.ones(1), atol=1e-4)
    assert torch.equal(task.x_train[:, ~varying], torch.zeros_like(task.x_train[:, ~varying]))
    # The test split is transformed with the training statistics, exactly as documented.
    assert torch.equal(task.x_test, (raw.x_test - task.mean) / task.std)
    assert torch.equal(task.x_train, (raw.x_train - task.mean) / task.std)
    # ...so it is not itself centred.
    assert task.x_test.mean(0).abs().max() > 1e-3


def test_blobs_options_and_stratification():
    task = load_task({"name": "blobs", "n_samples": 300, "n_classes": 4, "n_features": 5})
    assert task.input_dim == 5
    assert task.output_dim == 4
    assert len(task.x_test) == 60
    assert torch.bincount(task.y_test).tolist() == [15, 15, 15, 15]


def test_sine_targets_follow_the_sine_of_raw_inputs():
    task = load_task({"name": "sine", "noise": 0.0, "n_samples": 100, "standardize": False})
    assert task.x_train.min() >= -math.pi and task.x_train.max() <= math.pi
    assert torch.allclose(task.y_train, torch.sin(task.x_train), atol=1e-6)
    noisy = load_task({"name": "sine", "n_samples": 100, "standardize": False})
    residual = noisy.y_train - torch.sin(noisy.x_train)
    assert 0.02 < residual.std() < 0.1  # noise defaults to 0.05


def test_dictconfig_is_accepted():
    cfg = OmegaConf.create({"name": "moons", "seed": 4, "n_samples": 200, "noise": 0.2})
    OmegaConf.set_struct(cfg, True)  # missing keys must fall back to defaults
    _assert_tasks_equal(load_task(cfg), load_task(OmegaConf.to_container(cfg)))


def test_task_is_frozen_and_summarised():
    task = load_task({"name": "moons", "n_samples": 100})
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "other"
    assert task_summary(task) == {
        "name": "moons",
        "n_train": 80,
        "n_test": 20,
        "input_dim": 2,
        "output_dim": 2,
        "n_classes": 2,
    }


# --- mnist1d --------------------------------------------------------------------------------


def test_mnist1d_is_cached_and_the_cache_is_reused(tmp_path, monkeypatch):
    cfg = {"name": "mnist1d", "seed": 3, "n_samples": 500, "data_dir": str(tmp_path)}
    first = load_task(cfg)
    cache = tmp_path / "mnist1d" / "mnist1d_seed3_n500.npz"
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp file left
    with np.load(cache, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x", "x_test", "y", "y_test"]

    def fail(*args, **kwargs):
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    _assert_tasks_equal(first, load_task(cfg))


def test_mnist1d_without_data_dir_matches_the_cached_data(tmp_path):
    cfg = {"name": "mnist1d", "n_samples": 200}
    _assert_tasks_equal(load_task(cfg), load_task({**cfg, "data_dir": str(tmp_path)}))
    assert list(tmp_path.iterdir()) == [tmp_path / "mnist1d"]


def test_mnist1d_leaves_global_random_state_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_task({"name": "mnist1d", "n_samples": 100})
    assert np.random.rand() == expected


def test_damaged_mnist1d_cache(tmp_path):
    cache = tmp_path / "mnist1d" / "mnist1d_seed0_n100.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="delete it to regenerate") as info:
        load_task({"name": "mnist1d", "n_samples": 100, "data_dir": str(tmp_path)})
    assert str(cache) in str(info.value)


# --- mnist / fashion_mnist from IDX files ---------------------------------------------------


def _write_idx_task(folder, n_train=20, n_test=10, gzipped=("train_labels", "test_images")):
    """Tiny random MNIST-like IDX files; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        write_idx(folder / (IDX_STEMS[key] + (".gz" if key in gzipped else "")), array)
    return arrays


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_idx_task_loads_from_torchvision_layout(name, folder, tmp_path):
    arrays = _write_idx_task(tmp_path / folder / "raw")
    raw = load_task({"name": name, "data_dir": str(tmp_path), "standardize": False})
    assert raw.x_train.shape == (20, 784) and raw.x_test.shape == (10, 784)
    assert raw.n_classes == 10 and raw.output_dim == 10
    assert raw.y_train.dtype == torch.int64
    assert raw.y_train.tolist() == arrays["train_labels"].tolist()
    assert raw.y_test.tolist() == arrays["test_labels"].tolist()
    expected = torch.from_numpy(arrays["test_images"].reshape(10, 784) / np.float32(255))
    assert torch.equal(raw.x_test, expected)
    assert 0 <= raw.x_train.min() and raw.x_train.max() <= 1

    task = load_task({"name": name, "data_dir": str(tmp_path)})
    assert torch.allclose(task.x_train.mean(0), torch.zeros(784), atol=1e-5)
    assert torch.equal(task.x_test, (raw.x_test - task.mean) / task.std)


def test_raw_file_preferred_over_gz(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    arrays = _write_idx_task(folder, gzipped=())
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(20, dtype=np.uint8))
    task = load_task({"name": "mnist", "data_dir": str(tmp_path)})
    assert task.y_train.tolist() == arrays["train_labels"].tolist()


def test_missing_idx_folder_names_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_task({"name": "fashion_mnist", "data_dir": str(tmp_path)})
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte[.gz]" in message and "torchvision" in message
    assert "\n" not in message


def test_missing_idx_file_is_named(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _write_idx_task(folder)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"\(t10k-labels-idx1-ubyte missing\)"):
        load_task({"name": "mnist", "data_dir": str(tmp_path)})


def test_image_label_count_mismatch_names_both_files(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _write_idx_task(folder, gzipped=())
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="20 images but .* 19 labels") as info:
        load_task({"name": "mnist", "data_dir": str(tmp_path)})
    assert str(folder / "train-images-idx3-ubyte") in str(info.value)
    assert str(folder / "train-labels-idx1-ubyte") in str(info.value)


def test_wrong_image_shape_is_reported(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _write_idx_task(folder, gzipped=())
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: expected 28x28 uint8"):
        load_task({"name": "mnist", "data_dir": str(tmp_path)})


def test_idx_task_needs_data_dir():
    with pytest.raises(ConfigError, match="task.data_dir"):
        load_task({"name": "mnist"})


# --- config errors --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xyz", None])
def test_unknown_task_name(name):
    with pytest.raises(ConfigError, match="task.name: unknown task") as info:
        load_task({"name": name})
    assert repr(name) in str(info.value)
    assert "digits, mnist1d, blobs" in str(info.value)


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.5, -0.1, "0.2", True, float("nan")])
def test_bad_test_fraction(fraction):
    with pytest.raises(ConfigError, match="task.test_fraction"):
        load_task({"name": "digits", "test_fraction": fraction})


def test_too_few_samples_for_a_stratified_split():
    cfg = {"name": "blobs", "n_samples": 10, "n_classes": 3, "test_fraction": 0.1}
    with pytest.raises(ConfigError, match="task.test_fraction: cannot split 10 samples"):
        load_task(cfg)


@pytest.mark.parametrize(
    ("key", "value"),
    [("n_samples", 0), ("n_samples", 2.5), ("seed", -1), ("seed", 2**32), ("noise", -1.0)],
)
def test_bad_numeric_options(key, value):
    with pytest.raises(ConfigError, match=f"task.{key}"):
        load_task({"name": "moons", key: value})


def test_bad_standardize():
    with pytest.raises(ConfigError, match="task.standardize"):
        load_task({"name": "moons", "standardize": "yes"})
