"""The fused kernel's cache runs no library but its own build.

A cached ``.so`` is loaded only when its bytes hash to the sha256 recorded in its name and the
folder and file are the user's own; anything else is rebuilt (one warning), and when the build
does not load either, ``trainer=auto`` falls back to the torch path (one warning, no
traceback). Each test uses its own ``$WEIGHTSPACE_CACHE`` under tmp_path, seeded with one
clean build made per module (a rebuild costs about 2 s).
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from weightspace.nets.spec import MLPSpec
from weightspace.zoo.population import sample_population
from weightspace.zoo.train import fused
from weightspace.zoo.train.loop import train_population

pytestmark = pytest.mark.skipif(
    fused.unavailable_reason() is not None, reason="no C++ compiler to build the kernel"
)
SPEC = MLPSpec((64, 8, 10))

# A library that, once loaded, creates the file named by $WS_MARKER (its constructor runs
# inside dlopen, before any of its functions is called).
EVIL = r"""
#include <cstdio>
#include <cstdlib>
__attribute__((constructor)) static void planted() {
    const char *path = std::getenv("WS_MARKER");
    if (path) { std::FILE *f = std::fopen(path, "w"); if (f) std::fclose(f); }
}
extern "C" int ws_abi_version() { return 4; }
"""


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory) -> Path:
    """A kernels/ folder holding one clean build."""
    root = tmp_path_factory.mktemp("kernel_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WEIGHTSPACE_CACHE", str(root))
        fused.library.cache_clear()
        try:
            fused.library()
        finally:
            fused.library.cache_clear()
    return root / "kernels"


@pytest.fixture
def cache(clean_build, tmp_path, monkeypatch) -> Path:
    """This test's kernels/ folder: a copy of the clean build, in use from now on."""
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    shutil.copytree(clean_build, root / "kernels")
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(root))
    fused.library.cache_clear()
    yield root / "kernels"
    fused.library.cache_clear()


def the_library(folder: Path) -> Path:
    (so,) = folder.glob("fused_mlp-*.so")
    return so


def verified(so: Path) -> bool:
    return hashlib.sha256(so.read_bytes()).hexdigest() == so.stem.rpartition("-")[2]


def train(digits, trainer: str = "fused"):
    members = sample_population({"epochs": 2, "seed": [0, 1, 2]}, 3)
    return train_population(digits, SPEC, members, [1, 2], trainer=trainer)


def test_a_clean_build_records_its_own_sha256(cache):
    so = the_library(cache)
    assert so.name.startswith("fused_mlp-") and verified(so)
    assert not (so.stat().st_mode & 0o077)  # the user's alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused.library()  # loads as it is: no warning, no rebuild
    assert the_library(cache) == so


def test_a_tampered_library_is_never_loaded_and_the_zoo_trains_the_same(
    digits, clean_build, cache, tmp_path, monkeypatch
):
    so = the_library(cache)  # never loaded yet from this path (dlopen would reuse it)
    evil = tmp_path / "evil.so"
    (tmp_path / "evil.cpp").write_text(EVIL)
    cmd = [fused._compiler(), "-shared", "-fPIC", str(tmp_path / "evil.cpp"), "-o", str(evil)]
    fused.subprocess.run(cmd, check=True, capture_output=True)
    # The planted library is real: loaded, it runs its constructor.
    control, marker = tmp_path / "control", tmp_path / "pwned"
    monkeypatch.setenv("WS_MARKER", str(control))
    ctypes.CDLL(str(evil))
    assert control.exists()
    # Swapped in under the same name, so with the digest the clean build recorded.
    shutil.copy(evil, tmp_path / "swap.so")
    (tmp_path / "swap.so").replace(so)
    monkeypatch.setenv("WS_MARKER", str(marker))
    with pytest.warns(RuntimeWarning) as record:
        got = train(digits)
    assert [str(w.message) for w in record if "fused" in str(w.message)] == [
        f"fused kernel cache {cache}: refused {so.name} does not match its recorded sha256 "
        "(altered or truncated); rebuilt it"
    ]
    assert not marker.exists()
    rebuilt = the_library(cache)
    assert verified(rebuilt) and rebuilt.read_bytes() != evil.read_bytes()
    # The same zoo as with the untampered cache.
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(clean_build.parent))
    fused.library.cache_clear()
    expected = train(digits)
    assert got.trainer == expected.trainer == "fused"
    for name in expected.weights:
        assert torch.equal(got.weights[name], expected.weights[name]), name
    assert got.metrics.equals(expected.metrics)


def test_empty_truncated_and_unrecorded_libraries_are_rebuilt(cache):
    so = the_library(cache)
    good = so.read_bytes()
    key = so.stem.split("-")[1]
    empty = cache / f"fused_mlp-{key}-{hashlib.sha256(b'').hexdigest()}.so"  # digest matches
    empty.write_bytes(b"")
    so.write_bytes(good[: len(good) // 2])  # truncated
    old = cache / f"fused_mlp-{key}.so"  # an older version's build: no digest
    old.write_bytes(good)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fused.library()
    (message,) = [str(w.message) for w in record]
    assert message.startswith(f"fused kernel cache {cache}: refused ")
    assert f"{empty.name} does not load" in message
    assert f"{so.name} does not match its recorded sha256" in message
    assert f"{old.name} has no recorded sha256" in message and message.endswith("rebuilt it")
    assert verified(the_library(cache))


def test_an_empty_build_falls_back_to_torch_with_one_warning(digits, tmp_path, monkeypatch):
    """A toolchain that writes empty libraries: the kernel never loads, the torch path trains."""
    fake = tmp_path / "fake-c++"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\n'
        'while [ $# -gt 0 ]; do if [ "$1" = -o ]; then : > "$2"; fi; shift; done\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("WEIGHTSPACE_CACHE", str(tmp_path / "cache"))
    fused.library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            result = train(digits, "auto")
        (message,) = [str(w.message) for w in record]
        assert message.startswith("fused trainer unavailable (the kernel just built, fused_mlp-")
        assert "does not load" in message and message.endswith("training with the torch path")
        assert result.trainer == "hand" and (result.metrics["train_acc"] > 0).all()
        assert not list((tmp_path / "cache" / "kernels").iterdir())  # nothing left to load
    finally:
        fused.library.cache_clear()


def test_a_cache_others_may_write_is_not_used(digits, cache):
    cache.chmod(0o777)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(digits, "auto")
    (message,) = [str(w.message) for w in record]
    assert f"the kernel cache {cache} is writable by other users (mode 777)" in message
    assert result.trainer == "hand"
    cache.chmod(0o700)
    assert fused.unavailable_reason() is None


def test_an_edited_header_is_a_new_kernel(cache, tmp_path, monkeypatch):
    """The cache key covers the kernel's header (its vectorized math), not only its source."""
    header = tmp_path / "vecmath.h"
    header.write_text(fused.HEADERS[0].read_text() + "\n// edited\n")
    before = the_library(cache)
    monkeypatch.setattr(fused, "HEADERS", [header])
    fused.library()
    assert sorted(cache.glob("fused_mlp-*.so")) != [before]
    assert len(list(cache.glob("fused_mlp-*.so"))) == 2 and before.exists()
