"""Config helpers shared by the entry points: the ``ws_root`` resolver and config fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The one config root: conf/ of the source checkout (an editable install), else the copy a
# wheel ships inside the package (pyproject.toml maps conf/ to weightspace/conf).
_CHECKOUT = Path(__file__).resolve().parents[2]
_IN_CHECKOUT = (_CHECKOUT / "conf" / "generate.yaml").is_file()
CONF_DIR = _CHECKOUT / "conf" if _IN_CHECKOUT else Path(__file__).resolve().parent / "conf"


def project_root() -> str:
    """``$WEIGHTSPACE_ROOT``, else the checkout holding ``conf/``, else the home cache folder.

    Outputs never land wherever the command happened to be started.
    """
    env = os.environ.get("WEIGHTSPACE_ROOT")
    if env:
        return str(Path(env).expanduser().resolve())
    if _IN_CHECKOUT:
        return str(_CHECKOUT)
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
