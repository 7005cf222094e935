"""Helpers shared by the tests of several stages, imported like ``conftest`` (``tests/`` is on
``sys.path``): ``from helpers import SMALL_OVERRIDES``.

- :func:`quiet_trainer`: a Lightning trainer on the CPU that writes and prints nothing.
- :data:`SMALL_OVERRIDES`: the autoencoder config made small and quiet for CPU tests (used by
  the autoencoder tests, the sweep test and the DDP test).
- :data:`TINY_INR`: a tiny INR zoo (conf/generate.yaml overrides, ~3 s to generate).
- :func:`load_script`: a script of ``scripts/`` or ``benchmarks/`` as a module (its ``main``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """``scripts/x.py`` (a path under the checkout) imported as a module, not run."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Overrides of conf/train_autoencoder.yaml: small probe set and batches, CPU, no progress bar.
SMALL_OVERRIDES = (
    "evaluate=false",  # weightspace.evaluation is tested on its own
    "model.n_probe=64",
    "data.batch_size=8",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
)

# 12 SIRENs on 4 digit images (each fitted three times with different seeds), 30 Adam steps.
TINY_INR = (
    "experiment=zoo/inr_digits",
    "task.n_signals=4",
    "zoo.size=12",
    "zoo.shard_size=12",
    "zoo.checkpoints=[0,30]",
    "zoo.hparams.epochs=30",
)


def quiet_trainer(**kwargs):
    """A Lightning trainer on the CPU that logs, checkpoints and prints nothing; ``kwargs``
    add to those settings (``max_steps=2``, ``limit_val_batches=0``, ...)."""
    import pytorch_lightning as pl

    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**quiet, **kwargs})
