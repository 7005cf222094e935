"""``analyze(cfg)``: zoos in, one report out (``scripts/analyze.py``, ``conf/analyze.yaml``).

The config's ``sections`` are answered in order (:mod:`weightspace.analysis.sections`); the
report goes to ``out`` as ``report.html`` (figures embedded), one PNG per figure and
``figures.json`` with every figure's numbers, and to W&B with ``logger=wandb``.

Presets (``conf/experiment/analysis/*.yaml``) can make their zoos first: ``generate.<key>``
names candidate zoos (each a zoo preset's name, ``conf/experiment/zoo/NAME.yaml``, or a list of
``conf/generate.yaml`` overrides) for ``zoo`` or ``compare_zoo``; when that key is null, the
first candidate whose task data is on disk is generated (or resumed, or found finished) and
analysed. A path given on the command line
wins over the preset's zoo.

``autoencoder=RUN`` (a run folder, a run name under ``paths.log_dir``, or ``latest``;
:func:`weightspace.autoencoder.run.resolve_run`) is loaded before anything else, so a bad value
fails at once; with no ``zoo`` the run's zoo (its parent, for a derived zoo) is analysed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from weightspace.analysis.report import Report, log_wandb, write_report
from weightspace.analysis.sections import SECTIONS, Inputs
from weightspace.autoencoder.run import Run, load_run, resolve_run
from weightspace.config import CONF_DIR, to_dict
from weightspace.errors import ConfigError, DataError, ZooError
from weightspace.zoo.store import Zoo, resolve_zoo

log = logging.getLogger(__name__)

CONFIG_NAME = "analyze"


# --------------------------------------------------------------------------- config
def compose_config(*overrides: str) -> DictConfig:
    """``conf/analyze.yaml`` with ``overrides``, as the command line would compose it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(CONFIG_NAME, overrides=list(overrides))


def compose_generate(overrides: list[str]) -> DictConfig:
    """``conf/generate.yaml`` with ``overrides``, inside a running Hydra app (which composes
    from the same config root) or outside one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if GlobalHydra.instance().is_initialized():
            return compose("generate", overrides=list(overrides))
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("generate", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"{' '.join(overrides)}: {e}".replace("\n", " ")) from e


# --------------------------------------------------------------------------- zoos
def _value(cfg: DictConfig, key: str) -> Any:
    try:
        return cfg.get(key)
    except MissingMandatoryValue:
        return None


def zoo_overrides(candidate: str | Sequence[str]) -> list[str]:
    """A candidate zoo of a preset as ``conf/generate.yaml`` overrides: a zoo preset's name
    (``conf/experiment/zoo/NAME.yaml``) or a list of overrides."""
    if isinstance(candidate, str):
        return [f"experiment=zoo/{candidate}"]
    return [str(o) for o in candidate]


def make_zoos(cfg: DictConfig) -> tuple[dict[str, Path], list[str]]:
    """Generate the zoos ``cfg.generate`` describes for keys left null; returns their paths
    and notes (which candidate was used, and why others were not)."""
    paths: dict[str, Path] = {}
    notes: list[str] = []
    spec = to_dict(cfg.get("generate") or {})
    for key, candidates in spec.items():
        if key not in ("zoo", "compare_zoo"):
            raise ConfigError(f"generate.{key}: only zoo and compare_zoo can be generated")
        if _value(cfg, key) is not None:
            continue  # a path given explicitly wins over the preset's zoo
        if not isinstance(candidates, Mapping) or not candidates:
            raise ConfigError(
                f"generate.{key}: expected named zoo presets (conf/experiment/zoo/) or lists of "
                "generate.yaml overrides"
            )
        tried = []
        for name, candidate in candidates.items():
            overrides = zoo_overrides(candidate)
            base = [
                *(
                    f"paths.{k}={cfg.paths[k]}"
                    for k in ("root_dir", "data_dir", "zoo_dir", "log_dir")
                ),
                f"progress={str(bool(cfg.get('progress', True))).lower()}",
                "logger=none",
            ]
            gcfg = compose_generate([*map(str, overrides), *base])
            log.info("%s: generating (or resuming) %s [%s]", key, gcfg.zoo.path, name)
            try:
                from weightspace.zoo.generate import generate

                summary = generate(gcfg)
            except DataError as e:
                tried.append(f"{name} ({str(e).split(';')[0]})")  # the what, not the how-to
                continue
            if summary.missing_shards:
                raise ZooError(f"generate.{key}.{name}: zoo {summary.path} is incomplete")
            paths[key] = Path(summary.path)
            if tried:
                notes.append(
                    f"{key}: used candidate '{name}' ({gcfg.task.name}); not used: "
                    + "; ".join(tried)
                )
            break
        else:
            raise DataError(f"generate.{key}: no candidate's data is available: {'; '.join(tried)}")
    return paths, notes


def load_autoencoder(cfg: DictConfig, needed: bool = True) -> Run | None:
    """The run ``autoencoder`` names (a run folder, a run name under ``paths.log_dir``, or
    ``latest``), loaded with its datamodule when ``needed`` (the latent section is asked
    for), else only checked; None when ``autoencoder`` is null."""
    value = _value(cfg, "autoencoder")
    if not value:
        return None
    path = resolve_run(value, cfg.paths.log_dir)
    if not needed:
        return None
    latent = cfg.get("latent") or {}
    arch = latent.get("arch")  # a run over several architectures: one of them
    return load_run(
        path,
        checkpoint=str(latent.get("checkpoint", "best")),
        arch=None if arch is None else str(arch),
        arch_key="latent.arch",
    )


# --------------------------------------------------------------------------- analyze
# The five questions: a report of all of them is named after the zoo alone.
QUESTION_SECTIONS = ("patterns", "runs_differ", "symmetry_breaking", "weight_norm", "latent")


def default_name(zoo_name: str, sections: list[str]) -> str:
    """The report's name when ``name`` is null: the zoo's folder name, followed by the
    sections when not all five questions were asked, so that analyses of one zoo with
    different sections land in different folders instead of replacing each other."""
    if set(QUESTION_SECTIONS) <= set(sections):
        return zoo_name
    return "-".join([zoo_name, *sections])


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Answer the config's questions about its zoo(s) and write the report.

    Returns the report's paths, and per section whether it was skipped, its notes and its
    headline numbers. ``num_threads`` (if set) applies while it runs.
    """
    import torch

    threads = cfg.get("num_threads")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _analyze(cfg)
    finally:
        torch.set_num_threads(before)


def _analyze(cfg: DictConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    sections = list(cfg.get("sections") or [])
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"sections: unknown {unknown} (choose from {', '.join(SECTIONS)})")
    notes: list[str] = []
    # before any long work (the latent and INR sections read the run)
    run = load_autoencoder(cfg, needed=bool({"latent", "inr"} & set(sections)))
    made, made_notes = make_zoos(cfg)
    notes += made_notes
    zoo_value = made.get("zoo") or _value(cfg, "zoo")
    if zoo_value is None and run is not None:
        zoo_value = run.parent_zoo  # the zoo the run was trained on (its parent if derived)
    if zoo_value is None:
        raise ConfigError(
            "zoo: required, a zoo folder or a zoo name under paths.zoo_dir (or an "
            "autoencoder=RUN, whose zoo is then analysed)"
        )
    zoo = Zoo.open(resolve_zoo(zoo_value, cfg.paths.zoo_dir, "zoo"))
    compare_value = made.get("compare_zoo") or _value(cfg, "compare_zoo")
    compare = (
        Zoo.open(resolve_zoo(compare_value, cfg.paths.zoo_dir, "compare_zoo"))
        if compare_value
        else None
    )
    inputs = Inputs(zoo, compare, int(cfg.get("seed", 0)), run)

    done = []
    for key in sections:
        opts = to_dict(cfg.get(key) or {})
        log.info("section %s", key)
        done.append(SECTIONS[key](inputs, opts))

    name = cfg.get("name") or default_name(zoo.root.name, sections)
    out = Path(cfg.get("out") or Path(cfg.paths.log_dir) / "analysis" / name)
    shown = {
        "zoo": f"{zoo.root} ({len(zoo)} members, widths {list(zoo.spec.widths)}, "
        f"task {zoo.manifest['task']['name']})"
    }
    if compare is not None:
        shown["compare_zoo"] = (
            f"{compare.root} ({len(compare)} members, widths {list(compare.spec.widths)}, "
            f"task {compare.manifest['task']['name']})"
        )
    if run is not None:
        shown["autoencoder"] = run.describe()
    report = Report(
        title=str(cfg.get("title") or f"Weight-space analysis: {name}"),
        sections=done,
        inputs=shown,
        notes=notes,
    )
    figure_cfg = cfg.get("figure") or {}
    files = write_report(report, out, dpi=int(figure_cfg.get("dpi", 90)))
    lcfg = cfg.get("logger")
    if lcfg is not None and lcfg.get("name") == "wandb":
        analysed = {
            "zoo": str(zoo.root),
            "compare_zoo": None if compare is None else str(compare.root),
            "autoencoder": None if run is None else str(run.path),
            "autoencoder_wandb_id": None if run is None else run.record.get("wandb_id"),
            "autoencoder_checkpoint": None if run is None else str(run.checkpoint),
        }
        log_wandb(report, files, to_dict(lcfg), to_dict(cfg), f"analysis-{name}", analysed)
    return {
        "out": out,
        "report": files.html,
        "data": files.data,
        "pngs": files.pngs,
        "notes": notes,
        "sections": {
            s.key: {"skipped": s.skipped, "notes": s.notes, "summary": s.summary} for s in done
        },
        "seconds": time.perf_counter() - t0,
    }


def summary_text(result: Mapping[str, Any]) -> str:
    lines = [f"report: {result['report']}"]
    for key, s in result["sections"].items():
        lines.append(f"  {key}: " + ("skipped" if s["skipped"] else "done"))
        lines += [f"    {n}" for n in s["notes"]]
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"time: {result['seconds']:.1f} s")
    return "\n".join(lines)


def cli() -> None:
    """The command-line entry point (``scripts/analyze.py``)."""
    import hydra

    from weightspace.cli import launch, run_or_exit
    from weightspace.schema import validate

    @hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")
    def main(cfg: DictConfig) -> None:
        run_or_exit(validate, cfg, "analyze")  # types and ranges, before any work
        print(summary_text(run_or_exit(analyze, cfg)))

    launch(main)


__all__ = ["analyze", "cli", "compose_config", "compose_generate", "make_zoos", "zoo_overrides"]
