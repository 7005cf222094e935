"""Zoos from networks trained elsewhere: a folder of state_dicts, or modules in memory.

:func:`import_networks` (``Zoo.from_networks``, ``scripts/import_zoo.py``) reads each network
(safetensors, or ``torch.save`` files read with ``weights_only=True``; ``nn.Module`` s and
state dicts in memory), maps its keys to the zoo's names (``0.weight``, ``fc1.weight``,
``layers.0.weight``, ``net.2.weight``, ... -> ``layers.{l}.weight`` in layer order) and checks
that it is a plain MLP: only ``nn.Linear`` weights and biases, 2-D weights whose shapes chain;
convolutions, normalization layers, embeddings and weight-norm parameters are refused with one
line naming the file and the key. A module in memory must also compute the MLP its weights
describe (checked on random inputs), which catches skips and another activation; a state_dict
cannot show a skip. The members are written with :class:`~weightspace.zoo.writer.ZooWriter`,
so the result is a zoo like any other (checksums, manifest; every tool opens it).

Layer order: a ``torch.save`` file and a module keep their registration order; a safetensors
file stores its keys sorted, so its layers are put in natural order (``fc2`` before ``fc10``).
If that order does not chain and the other does, the other is used.

A state_dict does not say which activation its network applies: the caller names it
(``activation``, or a column ``activation`` of the table, one per member; a ``nn.Sequential``'s
own activation modules are checked against it). Each member has one checkpoint, at epoch
``epoch`` (the table's ``epochs`` column gives each member its own). With a task, each
member's train and test loss and accuracy are measured on it (input and output widths must
fit); the table's metric columns, if any, are kept as given. The manifest's ``imported``
records where the networks came from and how the first one's keys were mapped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from weightspace import __version__
from weightspace.config import CONF_DIR, fingerprint, to_dict
from weightspace.errors import ConfigError, ZooError
from weightspace.nets.forward import forward
from weightspace.nets.metrics import evaluate
from weightspace.nets.spec import _ACTIVATION_MODULES, ACTIVATIONS, MLPSpec, bias_name, weight_name
from weightspace.zoo.tasks import load_task, task_summary
from weightspace.zoo.writer import ZooWriter

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".pth")  # the files of a folder that are networks
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")
# Columns the zoo writes itself; a table must not bring them.
RESERVED = ("member_id", "source", "shard", "shard_row", "diverged", "diverged_epoch", "epoch")
NESTED = ("state_dict", "model_state_dict", "model")  # where checkpoints keep the state_dict
WRAPPERS = re.compile(r"(^|\.)(module|_orig_mod)\.")  # DataParallel's and torch.compile's
NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class Network:
    """One imported network: its parameters under the zoo's names, unstacked."""

    source: str  # file name, or networks[i]
    params: dict[str, Tensor]  # layers.{l}.weight (out, in), layers.{l}.bias (out,)
    widths: tuple[int, ...]
    bias: bool
    key_map: dict[str, str]  # original key -> zoo name
    activation: str | None = None  # what a module's own activation modules say


# --------------------------------------------------------------------------- reading
def _natural(key: str) -> list:
    """``fc10`` after ``fc2``: digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key) if t]


def load_state_dict(path: Path) -> dict[str, Tensor]:
    """A state_dict from a safetensors file or a ``torch.save`` file (``weights_only=True``;
    a checkpoint keeping it under ``state_dict`` / ``model_state_dict`` / ``model`` too)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ZooError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; the message says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooError(
            f"{path}: not readable with torch.load(weights_only=True): {first}"
        ) from None
    if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        obj = next((obj[k] for k in NESTED if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise ZooError(f"{path}: holds no state_dict (a mapping of names to tensors)")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def read_folder(folder: Path) -> list[tuple[str, dict[str, Tensor], bool]]:
    """``(file name, state_dict, keys in registration order)`` of every network file in
    ``folder``, in natural order of the names."""
    if not folder.is_dir():
        raise ConfigError(f"source: {folder} is not a folder")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES),
        key=lambda p: _natural(p.name),
    )
    if not files:
        raise ConfigError(f"source: {folder} holds no {', '.join(SUFFIXES)} files")
    return [(p.name, load_state_dict(p), p.suffix != ".safetensors") for p in files]


# --------------------------------------------------------------------------- keys
def _refuse(source: str, key: str, why: str) -> ZooError:
    return ZooError(f"{source}: {key}: {why}; only MLPs (nn.Linear layers) can be imported")


def _layers(source: str, sd: Mapping[str, Tensor]) -> dict[str, dict[str, tuple[str, Tensor]]]:
    """``{layer prefix: {"weight"|"bias": (original key, tensor)}}`` in the state_dict's order;
    anything that is not a Linear layer's weight or bias is refused."""
    out: dict[str, dict[str, tuple[str, Tensor]]] = {}
    for key, t in sd.items():
        prefix, _, part = WRAPPERS.sub(r"\1", key).rpartition(".")
        if part in NORM_BUFFERS:
            raise _refuse(source, key, "a normalization layer's statistics")
        if part in ("weight_g", "weight_v") or ".parametrizations." in f".{key}":
            raise _refuse(source, key, "weight normalization (store the effective weights)")
        if part not in ("weight", "bias"):
            raise _refuse(source, key, "not a weight or bias")
        if "emb" in prefix.rsplit(".", 1)[-1].lower():
            raise _refuse(source, key, "an embedding")
        if not t.is_floating_point():
            raise _refuse(source, key, f"dtype {t.dtype}, not floating point")
        if part == "weight" and t.dim() != 2:
            what = "a normalization layer's scale" if t.dim() == 1 else "a convolution kernel"
            raise _refuse(source, key, f"{t.dim()}-D weight {tuple(t.shape)}: {what}")
        if not bool(torch.isfinite(t).all()):
            raise ZooError(f"{source}: {key}: holds non-finite values")
        out.setdefault(prefix, {})[part] = (key, t)
    return out


def _chain_break(order: list[dict[str, tuple[str, Tensor]]]) -> str | None:
    """Why the layers in this order are not an MLP's chain of shapes, or None."""
    for prev, layer in zip(order, order[1:]):
        (pk, pw), (k, w) = prev["weight"], layer["weight"]
        if w.shape[1] != pw.shape[0]:
            return (
                f"{k}: shape {tuple(w.shape)} takes {w.shape[1]} inputs, but {pk} "
                f"{tuple(pw.shape)} gives {pw.shape[0]} (not a chain of Linear layers: a skip, "
                "a concatenation, or layers out of order?)"
            )
    return None


def map_keys(source: str, sd: Mapping[str, Tensor], ordered: bool) -> Network:
    """The network's parameters under the zoo's names, its shapes checked (see module docs).
    ``ordered``: the state_dict's keys are in registration order (else sorted)."""
    if not sd:
        raise ZooError(f"{source}: empty state_dict")
    found = _layers(source, sd)
    for parts in found.values():
        if "weight" not in parts:
            raise _refuse(source, parts["bias"][0], "a bias without a weight")
        w, b = parts["weight"][1], parts.get("bias", (None, None))[1]
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ZooError(f"{source}: {parts['bias'][0]}: shape {tuple(b.shape)}, the weight's "
                           f"{tuple(w.shape)} needs ({w.shape[0]},)")  # fmt: skip
    given = list(found.values())
    natural = [found[p] for p in sorted(found, key=_natural)]
    candidates = [given, natural] if ordered else [natural, given]
    order = next((c for c in candidates if _chain_break(c) is None), None)
    if order is None:
        raise ZooError(f"{source}: {_chain_break(candidates[0])}")
    with_bias = ["bias" in layer for layer in order]
    if any(with_bias) and not all(with_bias):
        missing = order[with_bias.index(False)]["weight"][0]
        raise ZooError(f"{source}: {missing}: this layer has no bias, others have one")
    params, key_map = {}, {}
    for l, layer in enumerate(order):
        for part, name in (("weight", weight_name(l)), ("bias", bias_name(l))):
            if part in layer:
                key, t = layer[part]
                params[name] = t.detach().to("cpu", torch.float32).contiguous()
                key_map[key] = name
    widths = (order[0]["weight"][1].shape[1], *(layer["weight"][1].shape[0] for layer in order))
    return Network(source, params, tuple(int(w) for w in widths), all(with_bias), key_map)


def from_module(source: str, module: nn.Module) -> Network:
    """A module's network: no module with parameters or buffers but ``nn.Linear``; its
    activation modules, if any, all of one kind."""
    acts = set()
    for name, sub in module.named_modules():
        own = [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]
        if isinstance(sub, nn.Linear):
            continue
        kind = next((a for a, m in _ACTIVATION_MODULES.items() if type(sub) is m), None)
        if kind is not None:
            acts.add(kind)
        elif own:  # modules without parameters (dropout, containers): forward checks them
            key = f"{name}.{own[0][0]}" if name else own[0][0]
            raise _refuse(source, key, f"a {type(sub).__name__} module")
    net = map_keys(source, module.state_dict(), ordered=True)
    if len(acts) > 1:
        raise ZooError(f"{source}: several activations ({', '.join(sorted(acts))}); an MLP has one")
    net.activation = next(iter(acts), None)
    return net


def check_function(source: str, module: nn.Module, net: Network, activation: str) -> None:
    """The module computes the MLP of its weights with ``activation`` (on seeded inputs)."""
    spec = MLPSpec(net.widths, activation, net.bias)
    x = torch.randn(64, net.widths[0], generator=torch.Generator().manual_seed(0))
    training = module.training
    try:
        with torch.no_grad():
            got = module.eval()(x).float()
    except Exception as e:
        raise ZooError(
            f"{source}: its forward fails on (64, {net.widths[0]}) inputs: {e}"
        ) from None
    finally:
        module.train(training)
    want = forward({k: v[None] for k, v in net.params.items()}, x, spec)[0]
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ZooError(
            f"{source}: does not compute the MLP of its Linear layers with activation "
            f"{activation} (a skip connection, another activation or another layer order?)"
        )


def read_networks(networks: Any) -> tuple[list[Network], list[nn.Module | None], str]:
    """The networks of a folder, or of a list of modules / state dicts; and what they are."""
    if isinstance(networks, str | os.PathLike):
        folder = Path(networks).expanduser()
        nets = [map_keys(name, sd, ordered) for name, sd, ordered in read_folder(folder)]
        return nets, [None] * len(nets), str(folder.resolve())
    items = list(networks)
    if not items:
        raise ConfigError("networks: none given")
    nets, modules = [], []
    for i, item in enumerate(items):
        source = f"networks[{i}]"
        if isinstance(item, nn.Module):
            nets.append(from_module(source, item))
            modules.append(item)
        elif isinstance(item, Mapping):
            nets.append(map_keys(source, {str(k): v for k, v in item.items()}, ordered=True))
            modules.append(None)
        else:
            raise ConfigError(f"{source}: a {type(item).__name__}, not a module or state_dict")
    return nets, modules, f"{len(items)} networks in memory"


# --------------------------------------------------------------------------- table and task
def read_table(table: Any, nets: Sequence[Network]) -> pd.DataFrame:
    """The per-member table in member order (empty without one): matched by its ``file``
    column (file name, with or without suffix) if it has one, else row by row."""
    if table is None:
        return pd.DataFrame(index=range(len(nets)))
    where = "table" if isinstance(table, pd.DataFrame) else str(table)
    try:
        df = table.copy() if isinstance(table, pd.DataFrame) else pd.read_csv(table)
    except (OSError, ValueError) as e:
        raise ConfigError(f"table: {where}: not a readable CSV ({e})") from None
    if bad := [c for c in df.columns if c in RESERVED]:
        raise ConfigError(f"table: {where}: column {bad[0]!r} is written by the zoo itself")
    if "file" in df.columns:
        keys = df["file"].astype(str)
        if keys.duplicated().any():
            raise ConfigError(f"table: {where}: file {keys[keys.duplicated()].iloc[0]!r} twice")
        row = {k: i for i, k in enumerate(keys)}
        pos = []
        for n in nets:
            i = row.get(n.source, row.get(Path(n.source).stem))
            if i is None:
                raise ConfigError(f"table: {where}: no row for {n.source} (column file)")
            pos.append(i)
        if len(set(pos)) != len(df):
            extra = sorted(set(range(len(df))) - set(pos))[0]
            raise ConfigError(f"table: {where}: file {keys.iloc[extra]!r} is not a network here")
        df = df.iloc[pos].drop(columns=["file"])
    elif len(df) != len(nets):
        raise ConfigError(
            f"table: {where}: {len(df)} rows for {len(nets)} networks (add a column file)"
        )
    return df.reset_index(drop=True)


def task_config(task: Any) -> dict[str, Any] | None:
    """A task's config: a name (``conf/task/<name>.yaml``, as generation composes it) or a
    mapping; None for none."""
    if task is None or isinstance(task, Mapping | DictConfig):
        return None if task is None else to_dict(task)
    path = CONF_DIR / "task" / f"{task}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
        raise ConfigError(f"task: unknown {task!r} (choose from {', '.join(names)})")
    paths = OmegaConf.load(CONF_DIR / "paths" / "default.yaml")
    cfg = OmegaConf.merge({"paths": paths, "task": OmegaConf.load(path)})
    return to_dict(cfg)["task"]


def _column(df: pd.DataFrame, col: str, default: Any, where: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), default, dtype=object)
    values = df[col].to_numpy(dtype=object)
    if pd.isna(df[col]).any():
        raise ConfigError(f"table: column {col!r} has empty cells ({where})")
    return values


# --------------------------------------------------------------------------- writing
def _architecture(spec: MLPSpec, activations: list[str]) -> dict[str, Any]:
    return {
        "widths": list(spec.widths),
        "bias": spec.bias,
        "weight_norm": False,
        "activations": activations,
        "param_shapes": {k: list(v) for k, v in spec.param_shapes().items()},
        "n_params": spec.n_params(),
    }


def _digest(nets: Sequence[Network]) -> str:
    h = hashlib.sha256()
    for n in nets:
        for k, v in n.params.items():
            h.update(k.encode())
            h.update(v.numpy().tobytes())
    return h.hexdigest()


def import_networks(
    networks: Any,
    path: str | os.PathLike,
    activation: str | None = None,
    *,
    task: Any = None,
    table: Any = None,
    epoch: int = 1,
    overwrite: bool = False,
    shard_size: int = 256,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``networks`` as a zoo at ``path``; returns the path (see the module docs).

    ``networks``: a folder of state_dict files, or a list of ``nn.Module`` s / state dicts.
    ``task``: a task name (``conf/task``), a task config, or None. ``table``: a CSV path or a
    DataFrame, one row per network. ``config``: the resolved config recorded as the zoo's
    ``config.yaml`` (default: these arguments).
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise ConfigError(f"activation: unknown {activation!r} ({', '.join(ACTIVATIONS)})")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConfigError(f"epoch: must be an integer >= 0, got {epoch!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size: must be an integer >= 1, got {shard_size!r}")
    nets, modules, origin = read_networks(networks)
    first = nets[0]
    for n in nets[1:]:
        if n.widths != first.widths or n.bias != first.bias:
            raise ZooError(
                f"{n.source}: widths {list(n.widths)}{'' if n.bias else ' without biases'}, "
                f"but {first.source} has {list(first.widths)}"
                f"{'' if first.bias else ' without biases'} (a zoo shares one architecture)"
            )
    df = read_table(table, nets)
    acts = _column(df, "activation", activation, "activation")
    for n, act in zip(nets, acts):
        act = act if act is not None else n.activation
        if act is None:
            raise ConfigError(f"activation: required ({n.source} does not say which it uses)")
        if act not in ACTIVATIONS:
            raise ConfigError(f"activation: {n.source}: unknown {act!r} ({', '.join(ACTIVATIONS)})")
        if n.activation is not None and n.activation != act:
            raise ZooError(f"{n.source}: holds {n.activation} modules, not {act}")
    acts = np.array([a if a is not None else n.activation for a, n in zip(acts, nets)], object)
    for n, module, act in zip(nets, modules, acts):
        if module is not None:
            check_function(n.source, module, n, str(act))
    epochs = _column(df, "epochs", epoch, "epochs")
    if not all(
        isinstance(e, int | np.integer) and not isinstance(e, bool) and e >= 0 for e in epochs
    ):
        raise ConfigError("table: column 'epochs' must hold integers >= 0")
    epochs = epochs.astype(np.int64)
    for col in METRICS:
        if col in df.columns and not pd.api.types.is_numeric_dtype(df[col]):
            raise ConfigError(f"table: column {col!r} must hold numbers")
    tcfg = task_config(task)
    loaded = load_task(tcfg) if tcfg is not None else None
    if loaded is not None and not hasattr(loaded, "x_train"):  # each member its own signal
        raise ConfigError(f"task: {loaded.name} is an INR task; import without a task")
    spec = MLPSpec(first.widths, str(acts[0]), first.bias)
    if loaded is not None and (loaded.input_dim, loaded.output_dim) != (
        spec.widths[0],
        spec.widths[-1],
    ):
        raise ConfigError(
            f"task: {loaded.name} has {loaded.input_dim} inputs and {loaded.output_dim} outputs, "
            f"the networks' widths are {list(spec.widths)}"
        )

    members = pd.DataFrame(
        {
            "member_id": np.arange(len(nets), dtype=np.int64),
            "source": [n.source for n in nets],
            "activation": acts.astype(str),
            "epochs": epochs,
        }
    )
    extra = df.drop(columns=[c for c in ("activation", "epochs", *METRICS) if c in df.columns])
    members = pd.concat([members, extra], axis=1)
    # Shards: members of one activation and one checkpoint epoch, shard_size at most.
    order = members.sort_values(["activation", "epochs", "member_id"], kind="stable")
    shard, row, s = np.zeros(len(nets), np.int64), np.zeros(len(nets), np.int64), -1
    for _, group in order.groupby(["activation", "epochs"], sort=False):
        for i, m in enumerate(group["member_id"]):
            s += i % shard_size == 0
            shard[m], row[m] = s, i % shard_size
    members = members.assign(shard=shard, shard_row=row)

    if table is None or isinstance(table, pd.DataFrame):
        table_name = None if table is None else "DataFrame"
    else:
        table_name = str(Path(table).resolve())
    settings = {
        "source": origin,
        "activation": activation,
        "epoch": epoch,
        "shard_size": shard_size,
        "table": table_name,
    }
    config = dict(config) if config is not None else {"import": settings, "task": tcfg}
    defining = {
        "weights": _digest(nets),
        "members": members.to_json(),
        "metrics": df[[c for c in METRICS if c in df.columns]].to_json(),
        "task": None if tcfg is None else {k: v for k, v in tcfg.items() if k != "data_dir"},
        "format": "import-1",
    }
    writer = ZooWriter(
        path, OmegaConf.to_yaml(OmegaConf.create(config)), fingerprint(defining), overwrite
    )
    n_shards = int(shard.max()) + 1
    writer.write_plan(n_shards)
    for s in range(n_shards):
        if writer.shard_done(s):
            continue
        rows = members[members["shard"] == s].sort_values("shard_row")
        ids = rows["member_id"].to_numpy()
        e = int(rows["epochs"].iloc[0])
        stacked = {k: torch.stack([nets[i].params[k] for i in ids])[:, None] for k in first.params}
        metrics = pd.DataFrame({"member_id": ids, "epoch": np.full(len(ids), e, np.int64)})
        group_spec = MLPSpec(spec.widths, str(rows["activation"].iloc[0]), spec.bias)
        if loaded is not None:  # (members, 1, ...) -> (members, ...)
            params = {k: v[:, 0] for k, v in stacked.items()}
            for split, x, y in (
                ("train", loaded.x_train, loaded.y_train),
                ("test", loaded.x_test, loaded.y_test),
            ):
                loss, acc = evaluate(params, group_spec, x, y, loaded)
                metrics[f"{split}_loss"], metrics[f"{split}_acc"] = loss.numpy(), acc.numpy()
        for col in METRICS:
            if col in df.columns:
                metrics[col] = df[col].to_numpy(float)[ids]
            elif col not in metrics.columns:
                metrics[col] = np.nan
        metrics["diverged"] = False
        writer.write_shard(s, ids, [e], stacked, metrics, np.full(len(ids), -1, np.int64))

    manifest = {
        "created_by": f"weightspace {__version__}",
        "architecture": _architecture(spec, list(members["activation"].value_counts().index)),
        "task": task_summary(loaded) if loaded is not None else {"name": "none"},
        "checkpoint_epochs": sorted({int(e) for e in epochs}),
        "layout": "each tensor is (members, checkpoints, *state_dict_shape)",
        "torch_version": torch.__version__,
        "imported": {**settings, "key_map": first.key_map},
    }
    writer.finalize(members, manifest)
    log.info("zoo %s: %d networks imported from %s", path, len(nets), origin)
    return Path(path)


def import_zoo(cfg: DictConfig) -> Path:
    """The ``weightspace-import`` entry point's work (``conf/import_zoo.yaml``)."""
    if OmegaConf.is_missing(cfg, "source") or not str(cfg.get("source") or ""):
        raise ConfigError("source: required: a folder of state_dicts (.safetensors, .pt, .pth)")
    source = Path(str(cfg.source)).expanduser()
    name = cfg.get("name") or source.resolve().name
    out = cfg.get("out") or Path(str(cfg.paths.zoo_dir)) / str(name)
    return import_networks(
        source,
        out,
        cfg.get("activation"),
        task=cfg.get("task"),
        table=cfg.get("table"),
        epoch=cfg.get("epoch", 1),
        overwrite=bool(cfg.get("overwrite", False)),
        shard_size=cfg.get("shard_size", 256),
        config=to_dict(cfg),
    )


def cli() -> None:
    """The ``weightspace-import`` console script: same as ``scripts/import_zoo.py``."""
    import hydra

    from weightspace.cli import run_or_exit

    @hydra.main(config_path=str(CONF_DIR), config_name="import_zoo", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        print(f"zoo: {run_or_exit(import_zoo, cfg)}")

    main()
