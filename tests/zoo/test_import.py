"""Networks trained elsewhere become a zoo (weightspace.zoo.importer, Zoo.from_networks,
scripts/import_zoo.py): real ``torch.save`` and safetensors files of several key styles,
written here; a CSV; the zoo read by the other tools; every refusal one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file
from torch import nn

from weightspace.config import CONF_DIR
from weightspace.data.dataset import WeightDataset
from weightspace.errors import ConfigError, ZooError
from weightspace.features.statistics import layer_statistics
from weightspace.symmetry.derive import derive
from weightspace.zoo.importer import import_zoo
from weightspace.zoo.store import Zoo

WIDTHS = (64, 12, 8, 10)  # digits in, 10 classes out: a task can measure them


class Named(nn.Module):
    """fc1 .. fc3 with F.relu in forward: a state_dict of this style says nothing of relu."""

    def __init__(self, names=("fc1", "fc2", "fc3")):
        super().__init__()
        self.names = names
        for name, (i, o) in zip(names, zip(WIDTHS[:-1], WIDTHS[1:])):
            setattr(self, name, nn.Linear(i, o))

    def forward(self, x):
        for k, name in enumerate(self.names):
            x = getattr(self, name)(x)
            x = torch.relu(x) if k < len(self.names) - 1 else x
        return x


class Skip(nn.Module):
    """Linear layers whose shapes chain, and a skip connection only forward shows."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x


def sequential(act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 12), act(), nn.Linear(12, 8), act(), nn.Linear(8, 10))


def same_function(zoo: Zoo, member: int, net: nn.Module) -> bool:
    x = torch.randn(16, WIDTHS[0], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(zoo.module(member)(x), net.eval()(x), atol=1e-6)


# Each style: the network, and what torch.save stores of it.
def _ordinary(net):
    return net.state_dict()


def _lightning(net):  # a checkpoint: the state_dict nested, under the module's attribute name
    return {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}


def _wrapped(net):  # DataParallel around torch.compile
    return {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = sequential()  # net.0, net.2, net.4

    def forward(self, x):
        return self.net(x)


class Listed(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(  # layers.0 .. layers.2
            nn.Linear(i, o) for i, o in zip(WIDTHS[:-1], WIDTHS[1:])
        )

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


STYLES = {
    "sequential": (sequential, _ordinary, "0.weight"),  # 0, 2, 4
    "named": (Named, _ordinary, "fc1.weight"),
    "module_list": (Listed, _ordinary, "layers.0.weight"),
    "nested": (Holder, _ordinary, "net.0.weight"),
    "input_hidden_output": (
        lambda: Named(("input", "hidden", "output")),
        _ordinary,
        "input.weight",
    ),
    "lightning": (Holder, _lightning, "model.net.0.weight"),
    "wrapped": (sequential, _wrapped, "module._orig_mod.0.weight"),
}


@pytest.mark.parametrize("style", STYLES)
def test_torch_save_files_of_each_key_style_import_as_the_same_functions(style, tmp_path):
    make, stored, first_key = STYLES[style]
    nets = []
    for i in range(3):
        torch.manual_seed(i)
        nets.append(make())
        torch.save(stored(nets[-1]), tmp_path / f"run{i}.pt")
    zoo = Zoo.from_networks(tmp_path, tmp_path / "zoo", "relu")
    assert zoo.spec.widths == WIDTHS and len(zoo) == 3 and zoo.epochs == [1]
    assert list(zoo.members["source"]) == ["run0.pt", "run1.pt", "run2.pt"]
    assert zoo.manifest["imported"]["key_map"][first_key] == "layers.0.weight"
    assert all(same_function(zoo, i, net) for i, net in enumerate(nets))


def test_safetensors_layers_in_natural_order_and_a_csv(tmp_path):
    """safetensors sorts its keys (fc10 before fc8): the layers are put in natural order.
    The CSV is matched by file name, in any row order, and brings hyperparameters, a metric
    and each member's activation and epoch; the task measures the other metrics."""
    src = tmp_path / "runs"
    src.mkdir()
    nets = []
    for i in range(4):
        torch.manual_seed(i)
        nets.append(Named(("fc8", "fc9", "fc10")))
        save_file(nets[-1].state_dict(), str(src / f"net-{i}.safetensors"))
    table = pd.DataFrame(
        {
            "file": [f"net-{i}" for i in (3, 1, 0, 2)],
            "lr": [0.3, 0.1, 0.0, 0.2],
            "optimizer": ["adam", "sgd", "sgd", "adam"],
            "test_acc": [0.93, 0.91, 0.90, 0.92],
            "activation": ["relu", "tanh", "relu", "tanh"],
            "epochs": [30, 10, 30, 10],
        }
    )
    table.to_csv(src / "metrics.csv", index=False)
    zoo = Zoo.from_networks(src, tmp_path / "zoo", task="digits", table=src / "metrics.csv")
    m = zoo.members
    assert list(m["lr"]) == [0.0, 0.1, 0.2, 0.3] and list(m["optimizer"]) == [
        "sgd",
        "sgd",
        "adam",
        "adam",
    ]
    assert list(m["activation"]) == ["relu", "tanh", "tanh", "relu"]
    assert zoo.epochs == [10, 30] and m["shard"].nunique() == 2
    final = zoo.metrics.sort_values("member_id")
    assert list(final["epoch"]) == [30, 10, 10, 30]
    assert np.allclose(final["test_acc"], [0.90, 0.91, 0.92, 0.93])  # as given
    assert final["train_acc"].between(0, 1).all() and (final["train_loss"] > 0).all()  # measured
    assert zoo.manifest["task"]["name"] == "digits" and zoo.task().input_dim == 64
    assert zoo.manifest["imported"]["key_map"]["fc10.weight"] == "layers.2.weight"
    relu = next(i for i in range(4) if m["activation"][i] == "relu")
    assert same_function(zoo, relu, nets[relu])
    # Measured like a generated zoo's: untrained nets on 10 classes score near chance.
    assert final["train_acc"].max() < 0.3


def test_modules_in_memory_activation_from_the_modules_and_every_tool_reads_the_zoo(tmp_path):
    torch.manual_seed(0)
    nets = [sequential(nn.Tanh) for _ in range(6)]
    zoo = Zoo.from_networks(nets, tmp_path / "zoo", shard_size=4)  # tanh: read off the modules
    assert zoo.spec.activation == "tanh" and zoo.manifest["n_shards"] == 2
    assert all(same_function(zoo, i, net) for i, net in enumerate(nets))
    zoo.check_files()
    with pytest.raises(ZooError, match="records no task"):
        zoo.task()
    assert zoo.metrics["test_acc"].isna().all()  # no task, no table: nothing to measure
    stats = layer_statistics(zoo.weights(1), zoo.spec)
    assert stats.shape[0] == 6 and np.isfinite(stats).all()
    items = WeightDataset(zoo, epochs="last")
    assert len(items) == 6 and items[0]["weights"].shape == (zoo.spec.n_params(),)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("canonicalize", [f"parent={zoo.root}", "progress=false"])
    canonical = Zoo.open(derive(cfg))
    assert canonical.derived_from is not None and len(canonical) == 6
    assert same_function(canonical, 5, nets[5])
    # State dicts in memory too: the same weights and tables, byte for byte (config.yaml
    # records the call, here activation="tanh" given rather than read off the modules).
    again = Zoo.from_networks([n.state_dict() for n in nets], tmp_path / "again", "tanh",
                              shard_size=4)  # fmt: skip
    files = {k: v for k, v in zoo.manifest["files"].items() if k != "config.yaml"}
    assert files == {k: v for k, v in again.manifest["files"].items() if k != "config.yaml"}


def test_a_rerun_keeps_the_zoo_and_other_networks_need_overwrite(tmp_path):
    torch.manual_seed(0)
    nets = [sequential() for _ in range(2)]
    zoo = Zoo.from_networks(nets, tmp_path / "zoo")
    stamp = (zoo.root / "manifest.json").stat().st_mtime_ns
    Zoo.from_networks(nets, tmp_path / "zoo")
    assert (zoo.root / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(ZooError, match="overwrite=true"):
        Zoo.from_networks(nets[:1], tmp_path / "zoo")
    assert len(Zoo.from_networks(nets[:1], tmp_path / "zoo", overwrite=True)) == 1


class Embedded(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.head = nn.Embedding(10, 4), nn.Linear(4, 2)


def _save(folder: Path, name: str, obj) -> Path:
    folder.mkdir(exist_ok=True)
    torch.save(obj, folder / name)
    return folder


REFUSED = {  # what is saved -> what the one-line error must say
    "conv": (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)), "0.weight", "conv"),
    "batch_norm": (
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False)),
        "1.running_mean",
        "normalization layer's statistics",
    ),
    "layer_norm": (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "1.weight", "normalization"),
    "embedding": (Embedded(), "embedding.weight", "an embedding"),
    "unnamed_embedding": (  # (10, 4) then (2, 4): no chain
        nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)),
        "1.weight",
        "not a chain",
    ),
    "no_chain": (nn.Sequential(nn.Linear(4, 6), nn.Linear(5, 2)), "1.weight", "not a chain"),
    "weight_norm": (
        nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))),
        "0.parametrizations",
        "weight normalization",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_non_mlp_files_are_refused_naming_the_file_and_key(case, tmp_path):
    net, key, why = REFUSED[case]
    folder = _save(tmp_path / "in", "bad.pt", net.state_dict())
    with pytest.raises(ZooError) as err:
        Zoo.from_networks(folder, tmp_path / "zoo", "relu")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("bad.pt: ") and key in msg and why in msg
    assert not (tmp_path / "zoo").exists()  # refused before anything was written


def test_other_refusals_are_one_line(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ZooError, match=r"networks\[0\]: does not compute the MLP.*skip"):
        Zoo.from_networks([Skip()], tmp_path / "a", "relu")  # shapes chain; forward does not
    with pytest.raises(ZooError, match=r"networks\[0\]: holds tanh modules, not relu"):
        Zoo.from_networks([sequential(nn.Tanh)], tmp_path / "a", "relu")
    with pytest.raises(ZooError, match=r"networks\[0\]: 0\.weight: .*a Conv1d module"):
        Zoo.from_networks([nn.Sequential(nn.Conv1d(1, 1, 1))], tmp_path / "a", "relu")
    with pytest.raises(ConfigError, match="activation: required"):
        Zoo.from_networks([sequential().state_dict()], tmp_path / "a")
    with pytest.raises(ZooError, match=r"networks\[1\]: widths \[4, 3\]"):
        Zoo.from_networks([sequential(), nn.Linear(4, 3)], tmp_path / "a")
    no_bias = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    with pytest.raises(ZooError, match=r"2\.weight: this layer has no bias"):
        Zoo.from_networks([no_bias], tmp_path / "a")
    with pytest.raises(ConfigError, match="task: digits has 64 inputs"):
        Zoo.from_networks([nn.Linear(4, 3)], tmp_path / "a", "relu", task="digits")
    # A pickle that weights_only=True does not read (an arbitrary object).
    folder = _save(tmp_path / "pickle", "evil.pt", {"net": Skip()})
    with pytest.raises(ZooError, match=r"evil\.pt: not readable with torch\.load\(weights_only"):
        Zoo.from_networks(folder, tmp_path / "a", "relu")
    folder = _save(tmp_path / "nan", "nan.pt", {"0.weight": torch.full((2, 4), float("nan"))})
    with pytest.raises(ZooError, match=r"nan\.pt: 0\.weight: holds non-finite values"):
        Zoo.from_networks(folder, tmp_path / "a", "relu")
    folder = _save(tmp_path / "ok", "a.pt", sequential().state_dict())
    pd.DataFrame({"file": ["b.pt"], "lr": [0.1]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match=r"table: .*t\.csv: no row for a\.pt"):
        Zoo.from_networks(folder, tmp_path / "a", "relu", table=tmp_path / "t.csv")
    pd.DataFrame({"member_id": [0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match="column 'member_id' is written by the zoo"):
        Zoo.from_networks(folder, tmp_path / "a", "relu", table=tmp_path / "t.csv")
    assert not (tmp_path / "a").exists()


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("import_zoo", [f"paths.root_dir={root}", *overrides])


def _runs(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    runs = tmp_path / "my-runs"
    for i in range(2):
        _save(runs, f"{i}.pt", Named().state_dict())
    return runs


def test_entry_point_config(tmp_path):
    runs = _runs(tmp_path)
    path = import_zoo(_cfg(tmp_path, f"source={runs}", "activation=relu", "task=digits"))
    assert path == tmp_path / "zoos" / "my-runs"  # named after the folder, under paths.zoo_dir
    zoo = Zoo.open(path)
    assert zoo.config["task"]["name"] == "digits" and zoo.config["source"] == str(runs)
    assert zoo.task().n_classes == 10
    with pytest.raises(ConfigError, match="source: required"):
        import_zoo(_cfg(tmp_path))


@pytest.mark.slow
def test_command_line(tmp_path):
    runs = _runs(tmp_path)
    script = CONF_DIR.parent / "scripts" / "import_zoo.py"
    ok = subprocess.run(
        [sys.executable, script, f"source={runs}", "activation=relu", f"out={tmp_path / 'cli'}",
         f"paths.root_dir={tmp_path}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert Zoo.open(tmp_path / "cli").manifest["imported"]["activation"] == "relu"
    bad = subprocess.run(
        [sys.executable, script, f"source={runs}", f"paths.root_dir={tmp_path}",
         "name=other"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: activation: required (0.pt does not say which it uses)"
    ]
