"""Transforms named by string: the allow-list that lets a config name a function, never run code.

Configs (``data.transform=weightspace.symmetry.canonicalize``) and the ``config.yaml`` of a
saved run folder name the dataset's ``transform`` / ``augment`` by import path. A run folder
may come from anyone, so :func:`resolve_callable` treats such a string as an entry of an
allow-list, not as an import to perform: it yields a function of this package (or of the
program's own, already imported code) or a one-line :class:`~weightspace.errors.ConfigError`.
:func:`callable_name` is the inverse, the name a callable is stored under in hyperparameters.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import site
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from weightspace.errors import ConfigError

__all__ = ["PACKAGE", "callable_name", "resolve_callable"]

PACKAGE = "weightspace"  # a string may name a function of this package


def resolve_callable(obj: Callable | str | None, what: str) -> Callable | None:
    """A callable, or the import path of a function: ``"package.module.name"`` /
    ``"package.module:name"``.

    Configs (and saved run folders) name transforms by string, so a string is an allow-list
    entry, never an arbitrary import: it resolves only to a plain Python function
    (``def``, not a class, builtin or other object) named by one public attribute of a module
    (no ``a.b`` chains) that is either

    - **of this package**: the module is ``weightspace`` or under ``weightspace.`` (importing
      it runs only this package's code) and the function is defined under ``weightspace.``
      (re-exports count: ``weightspace.symmetry.canonicalize``; a name a module merely
      imported, such as ``weightspace.data.dataset.importlib``, does not); or
    - **of the running program's own code**, already imported (never imported here), not
      ``__main__``, outside the standard library and site-packages, the function defined in
      that very module: how a callable passed from Python round-trips through its stored
      name (:func:`callable_name`).

    Anything else is a one-line :class:`ConfigError`; pass other callables as objects.
    """
    if obj is None or callable(obj):
        return obj
    if not isinstance(obj, str):
        raise ConfigError(
            f"{what}: expected a callable or an import path, got {type(obj).__name__}"
        )
    module, _, name = obj.partition(":") if ":" in obj else obj.rpartition(".")
    if not module or not name.isidentifier() or name.startswith("_"):
        raise ConfigError(
            f"{what}: '{obj}' is not an import path of a function (package.module.function)"
        )
    if module == PACKAGE or module.startswith(PACKAGE + "."):
        try:
            mod = importlib.import_module(module)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"{what}: cannot import '{obj}' ({e})") from e
        home = PACKAGE
    elif _is_program_module(module):
        mod, home = sys.modules[module], module
    else:
        raise ConfigError(
            f"{what}: '{obj}' is not a function of {PACKAGE} (a config may name only "
            f"{PACKAGE}.<module>.<function>, e.g. {PACKAGE}.symmetry.canonicalize; pass other "
            "callables from Python)"
        )
    fn = getattr(mod, name, None)
    if fn is None:
        raise ConfigError(f"{what}: cannot import '{obj}' (no '{name}' in {module})")
    defined_in = str(getattr(fn, "__module__", None) or "?")
    inside = defined_in == home or (home == PACKAGE and defined_in.startswith(PACKAGE + "."))
    if not (inspect.isfunction(fn) and inside):
        raise ConfigError(
            f"{what}: '{obj}' is not a function defined in {home} (a {type(fn).__name__} "
            f"of {defined_in})"
        )
    return fn


def _is_program_module(name: str) -> bool:
    """``name`` is an imported module of the running program's own code (see
    :func:`resolve_callable`): not ``__main__``, a file outside the standard library and
    site-packages."""
    mod = sys.modules.get(name)
    file = getattr(mod, "__file__", None)
    if name == "__main__" or not file:
        return False
    path = Path(file).resolve()
    return not any(path.is_relative_to(root) for root in _library_roots())


@functools.cache
def _library_roots() -> tuple[Path, ...]:
    """Where the standard library and installed packages live."""
    paths = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return tuple(Path(p).resolve() for p in paths if p)


def callable_name(obj: Callable | str | None) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{name}" if module else name
