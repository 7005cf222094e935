"""Config helpers shared by the entry points: the ``ws_root`` resolver and config fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def project_root() -> str:
    """``$WEIGHTSPACE_ROOT``, else the checkout holding ``conf/``, else the home cache folder.

    Outputs never land wherever the command happened to be started.
    """
    env = os.environ.get("WEIGHTSPACE_ROOT")
    if env:
        return str(Path(env).expanduser().resolve())
    if CONF_DIR.is_dir():
        return str(CONF_DIR.parent)
    return str(Path.home() / ".cache" / "weightspace")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("ws_root"):
        OmegaConf.register_new_resolver("ws_root", project_root)


register_resolvers()


def to_dict(cfg: DictConfig | dict) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def fingerprint(parts: dict[str, Any]) -> str:
    """sha256 of a canonical JSON form: equal exactly when the parts are equal."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
