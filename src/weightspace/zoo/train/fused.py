"""The fused CPU trainer: one C++ kernel trains each member's whole epoch in cache.

The torch path of :mod:`weightspace.zoo.train.loop` runs a population step as batched products
(MKL reaches about half of peak on per-member 32x65 matrices) and a dozen memory-bound
passes over all members (gather, loss, activations, optimizer, divergence check). A small
MLP's parameters, optimizer state and activations fit in a core's L1/L2 cache, so here one
call trains a member's whole epoch with nothing leaving the cache: forward, loss, backward,
optimizer step and divergence check fused, products register-blocked (``csrc/fused_mlp.cpp``).
Members are split over worker threads; a member's numbers do not depend on the split.

The kernel is a plain shared library with a C interface, compiled on first use with the
machine's C++ compiler (``-O3 -march=native``, ~2 s, no PyTorch headers) into a cache keyed by
the sources (``fused_mlp.cpp`` and ``vecmath.h``), the compiler and the CPU's features
(``$WEIGHTSPACE_CACHE`` or ``~/.cache/weightspace``), and called through :mod:`ctypes`, which
releases the GIL.

Loading a library runs its code (its constructors run inside ``dlopen``), so a cached file is
loaded only once it is shown to be the one built here, checked before ``dlopen``:

- **its own sha256, recorded at build time in its name**: ``kernels/fused_mlp-<key of the
  inputs>-<sha256 of the library>.so``, written under a temporary name and renamed, so the
  record and the bytes appear together or not at all (no second file that a crash or a
  concurrent build could leave disagreeing). A file whose bytes do not hash to its name
  (tampered, truncated, emptied), or with no digest in its name (an older version's), is
  deleted and the kernel rebuilt, with one warning;
- **a private folder**: ``kernels/`` must belong to the user and not be writable by group or
  others (created ``0700``), and so must each file. The digest alone cannot stop someone who
  may write the folder (they would name their file after its hash); ownership does, and it
  also closes the window between the check and ``dlopen``. A folder that fails this is not
  used at all: the torch path runs, with one warning (give ``$WEIGHTSPACE_CACHE`` a folder of
  your own).

A library that passes and still does not load (a broken toolchain wrote an empty file) is
rebuilt once; if the fresh build does not load either, :class:`FusedUnavailable` says why and
``trainer=auto`` falls back to the torch path with one warning, never a traceback.

It covers what :class:`weightspace.zoo.train.hand.HandBackprop` covers (every activation, with or
without biases, classification and regression, SGD with momentum and Adam) on CPU. Its tanh,
gelu (the exact erf form), sigmoid and sine and their derivatives are vector code
(``csrc/vecmath.h``: polynomials accurate to a few float32 ulps, :func:`activation` exposes
them to the tests), so every activation trains within ~1.3x of relu's speed; weight
normalization and GPUs use the torch path. Its numbers match the torch path's to float
rounding (``tests/nets/test_parity.py``), not bit for bit: a zoo records which trainer made it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name

SOURCE = Path(__file__).with_name("csrc") / "fused_mlp.cpp"
HEADERS = [SOURCE.with_name("vecmath.h")]  # its vectorized nonlinearities
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp-simd", "-std=c++17"]
PAD = 16  # output widths are padded to a multiple of this (one AVX-512 vector)
ACT_CODES = {
    "relu": 0, "tanh": 1, "gelu": 2, "sigmoid": 3, "leaky_relu": 4, "identity": 5, "sine": 6,
}  # fmt: skip
ABI_VERSION = 5


class FusedUnavailable(RuntimeError):
    """The fused kernel cannot be built or loaded here (no C++ compiler, unsupported CPU)."""


def cache_dir() -> Path:
    root = os.environ.get("WEIGHTSPACE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "weightspace"


def _compiler() -> str:
    """$CXX if set, else the first of c++, g++, clang++ on the PATH."""
    wanted = os.environ.get("CXX")
    for name in [wanted] if wanted else ["c++", "g++", "clang++"]:
        if shutil.which(name):
            return name
    if wanted:
        raise FusedUnavailable(f"the C++ compiler CXX={wanted!r} was not found")
    raise FusedUnavailable("no C++ compiler found (set CXX, or install g++ or clang++)")


def _cpu_features() -> str:
    """What -march=native depends on: a library built on one CPU may not run on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def library() -> ctypes.CDLL:
    """The compiled kernel: a verified build from the cache, else built now (see the module
    docs). Raises FusedUnavailable."""
    if platform.system() == "Windows":
        raise FusedUnavailable("the fused kernel is built for Linux and macOS only")
    cxx = _compiler()
    try:
        version = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise FusedUnavailable(f"C++ compiler {cxx!r} does not run: {e}") from None
    key = hashlib.sha256(
        "\n".join(
            [SOURCE.read_text(), *(h.read_text() for h in HEADERS), " ".join(FLAGS), version]
            + [_cpu_features()]
        ).encode()
    ).hexdigest()[:16]
    folder = _private_folder(cache_dir() / "kernels")
    refused = []  # "<file> <why>" of cached files not loaded
    for path in sorted(folder.glob(f"fused_mlp-{key}*.so")):
        why = _unverified(path)
        if why is None:
            try:
                return _bind(path)
            except FusedUnavailable as e:
                why = str(e)
        refused.append(f"{path.name} {why}")
        _remove(path)
    after = f" (after refusing the cached {'; '.join(refused)})" if refused else ""
    try:
        path = _build(cxx, key, folder)
    except FusedUnavailable as e:
        raise FusedUnavailable(f"{e}{after}") from None
    try:
        lib = _bind(path)
    except FusedUnavailable as e:
        _remove(path)
        raise FusedUnavailable(f"the kernel just built, {path.name}, {e}{after}") from None
    if refused:
        warnings.warn(
            f"fused kernel cache {folder}: refused {'; '.join(refused)}; rebuilt it",
            RuntimeWarning,
            stacklevel=2,
        )
    return lib


def _private_folder(folder: Path) -> Path:
    """``folder``, made if needed (0700); refused unless the user owns it and no one else may
    write to it."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except OSError as e:
        raise FusedUnavailable(f"the kernel cache {folder} is not usable ({e})") from None
    fix = "; give WEIGHTSPACE_CACHE a folder of your own"
    if not stat.S_ISDIR(st.st_mode):
        raise FusedUnavailable(f"the kernel cache {folder} is not a folder{fix}")
    if st.st_uid != os.getuid():
        raise FusedUnavailable(f"the kernel cache {folder} belongs to another user{fix}")
    if st.st_mode & 0o022:
        raise FusedUnavailable(
            f"the kernel cache {folder} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}): chmod go-w it{fix}"
        )
    return folder


def _unverified(path: Path) -> str | None:
    """Why the cached library ``path`` must not be loaded, or None: its digest, as its name
    records it, matches its bytes; it is a regular file of the user's, writable by no one
    else (read and checked through one open file: no symlink followed)."""
    digest = path.stem.rpartition("-")[2]
    if len(digest) != 64:
        return "has no recorded sha256 (an older version's build)"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            return "belongs to another user or is writable by others"
        if _sha256(f) != digest:
            return "does not match its recorded sha256 (altered or truncated)"
    return None


def _build(cxx: str, key: str, folder: Path) -> Path:
    """Compile the kernel into ``folder``, named after ``key`` and its own sha256."""
    # Built under a temporary name and renamed: concurrent builds cannot clash, and an
    # interrupted one leaves no library (nor a digest) behind.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".fused_mlp-{key}-", suffix=".so", dir=folder)
        os.close(fd)
    except OSError as e:
        raise FusedUnavailable(f"cannot write to the kernel cache {folder} ({e})") from None
    try:
        cmd = [cxx, *FLAGS, "-shared", "-fPIC", str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            err = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FusedUnavailable(f"building {SOURCE.name} failed: {err}")
        os.chmod(tmp, 0o700)
        with open(tmp, "rb") as f:
            digest = _sha256(f)
        path = folder / f"fused_mlp-{key}-{digest}.so"
        os.replace(tmp, path)
    except OSError as e:
        raise FusedUnavailable(f"building {SOURCE.name} failed: {e}") from None
    finally:
        _remove(Path(tmp))
    return path


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _bind(path: Path) -> ctypes.CDLL:
    """Load the library at ``path`` (already verified) and declare its functions."""
    try:
        lib = ctypes.CDLL(str(path))
        abi = lib.ws_abi_version()
    except (OSError, AttributeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise FusedUnavailable(f"does not load ({reason})") from None
    if abi != ABI_VERSION:
        raise FusedUnavailable(f"is kernel version {abi}, not {ABI_VERSION}")
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    lib.ws_train_epoch.restype = ctypes.c_int
    lib.ws_train_epoch.argtypes = [
        p, i64, i64, p, i64, p, p, i64, i64, i64, p, i64,  # data, order, batch, shuffle
        p, p, p, i64, p, p, p, p,  # params, state, lr / momentum / decay, active
        p, i64, i32, i32, i32, i64, i64, i64,  # layers, activation, kinds, t0, members
    ]  # fmt: skip
    lib.ws_evaluate.restype = ctypes.c_int
    lib.ws_evaluate.argtypes = [p, i64, i64, p, p, p, i64, p, i64, i32, i32, i64, i64, p, p]
    lib.ws_activate.restype = None
    lib.ws_activate.argtypes = [i32, p, p, p, i64]
    lib.ws_shuffle.restype = None
    lib.ws_shuffle.argtypes = [p, i64, i64, p, i64, i64, i64, p]
    return lib


def shuffle(base: Tensor, seeds: Tensor, epoch: int) -> Tensor:
    """The kernel's data order: rows of ``base`` (M or 1, n) shuffled per member's seed (M,).

    The same numbers as :func:`weightspace.zoo.train.data_order.shuffled`, the reference.
    """
    base, seeds = _contiguous(base, torch.int64), _contiguous(seeds, torch.int64)
    m, n = len(seeds), base.shape[1]
    out = torch.empty(m, n, dtype=torch.int64)
    stride = n if base.shape[0] == m else 0
    lib = library()
    lib.ws_shuffle(base.data_ptr(), stride, n, seeds.data_ptr(), int(epoch), 0, m, out.data_ptr())
    return out


def activation(name: str, z: Tensor, grad: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The kernel's activation ``name`` of ``z`` (any shape), and with ``grad`` its derivative
    too: what training computes, for tests against torch's functions."""
    z = _contiguous(z, torch.float32)
    a = torch.empty_like(z)
    d = torch.ones_like(z) if grad else None
    library().ws_activate(
        ACT_CODES[name], z.data_ptr(), a.data_ptr(), d.data_ptr() if grad else None, z.numel()
    )
    return (a, d) if grad else a


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used on this machine, or None when it can."""
    try:
        library()
    except FusedUnavailable as e:
        return str(e)
    return None


def supported(spec: MLPSpec, device: torch.device) -> str | None:
    """Why the fused trainer does not apply to this spec and device, or None."""
    if device.type != "cpu":
        return f"it runs on CPU only (device is {device.type})"
    if spec.weight_norm:
        return "weight normalization is trained by the torch path"
    if spec.activation not in ACT_CODES:
        return f"no fused activation {spec.activation!r}"
    return None


class FusedLayout:
    """Where a member's tensors live in its row of P floats (see ``csrc/fused_mlp.cpp``)."""

    def __init__(self, spec: MLPSpec):
        self.spec = spec
        rows, off = [], 0
        for o, i in spec.layer_shapes():
            op = -(-o // PAD) * PAD
            w, off = off, off + i * op
            b = -1
            if spec.bias:
                b, off = off, off + op
            rows.append((i, o, op, w, b))
        self.layers = rows
        self.size = off  # P
        self.meta = np.ascontiguousarray(np.array(rows, dtype=np.int64))

    def pack(self, params: Mapping[str, Tensor]) -> Tensor:
        """(M, P) float32 from stacked ``state_dict`` tensors (weights (M, out, in))."""
        m = next(iter(params.values())).shape[0]
        flat = torch.zeros(m, self.size, dtype=torch.float32)
        for l, (i, o, op, w, b) in enumerate(self.layers):
            dst = flat[:, w : w + i * op].view(m, i, op)
            dst[..., :o] = params[weight_name(l)].detach().float().cpu().transpose(1, 2)
            if b >= 0:
                flat[:, b : b + o] = params[bias_name(l)].detach().float().cpu()
        return flat

    def unpack(self, flat: Tensor) -> Params:
        """Stacked ``state_dict`` tensors (copies) from (M, P)."""
        m = flat.shape[0]
        out: Params = {}
        for l, (i, o, op, w, b) in enumerate(self.layers):
            wt = flat[:, w : w + i * op].view(m, i, op)[..., :o]
            out[weight_name(l)] = wt.transpose(1, 2).contiguous()
            if b >= 0:
                out[bias_name(l)] = flat[:, b : b + o].clone()
        return out


class FusedPopulation:
    """Parameters, optimizer state and per-member settings of a population, kernel layout.

    ``params`` (M, P); ``active`` (M,) bool, cleared by the kernel when a member diverges.
    """

    def __init__(
        self,
        spec: MLPSpec,
        init: Mapping[str, Tensor],
        optimizer: str,
        lr: np.ndarray,
        momentum: np.ndarray,
        weight_decay: np.ndarray,
    ):
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer: 'sgd' or 'adam', got {optimizer!r}")
        self.lib = library()
        self.layout = FusedLayout(spec)
        self.spec, self.adam = spec, optimizer == "adam"
        self.params = self.layout.pack(init)
        m = self.params.shape[0]
        self.s1 = torch.zeros_like(self.params)
        self.s2 = torch.zeros_like(self.params) if self.adam else self.s1
        f32 = functools.partial(torch.tensor, dtype=torch.float32)
        self.lr, self.momentum = f32(np.asarray(lr)), f32(np.asarray(momentum))
        self.weight_decay = f32(np.asarray(weight_decay))
        self.active = torch.ones(m, dtype=torch.bool)

    def __len__(self) -> int:
        return self.params.shape[0]

    def epoch(
        self,
        x: Tensor,
        targets: Tensor,
        order: Tensor,
        batch_size: int,
        t0: int,
        members: slice,
        seeds: Tensor | None = None,
        epoch: int = 0,
    ) -> None:
        """Train ``members`` one epoch over ``order`` (M or 1, n_seen) of the rows of ``x``.

        targets: class indices, (N,) shared or (M, N) per member; or regression targets
        (N, out). ``t0``: optimizer steps taken before. With ``seeds`` (M,), each member
        visits its row of ``order`` shuffled for ``epoch`` (:func:`shuffle`), shuffled by the
        kernel itself. Safe to call from several threads at once on disjoint member ranges
        (the GIL is released while it runs).
        """
        x = _contiguous(x, torch.float32)
        order = _contiguous(order, torch.int64)
        if seeds is not None:
            seeds = _contiguous(seeds, torch.int64)
            if seeds.shape != (len(self),):
                raise ValueError(f"seeds: one per member ({len(self)}), got {tuple(seeds.shape)}")
        classification = targets.dtype == torch.int64
        targets = _contiguous(targets, torch.int64 if classification else torch.float32)
        m = len(self)
        n_seen = order.shape[1]
        if order.dim() != 2 or order.shape[0] not in (1, m):
            raise ValueError(f"order: (members or 1, n_seen), got {tuple(order.shape)}")
        if classification:
            labels, stride = targets, (targets.shape[1] if targets.dim() == 2 else 0)
            regression = None
        else:
            labels, stride, regression = None, 0, targets
        rc = self.lib.ws_train_epoch(
            x.data_ptr(), x.shape[0], x.shape[1],
            labels.data_ptr() if labels is not None else None, stride,
            regression.data_ptr() if regression is not None else None,
            order.data_ptr(), n_seen if order.shape[0] == m else 0, n_seen, int(batch_size),
            seeds.data_ptr() if seeds is not None else None, int(epoch),
            self.params.data_ptr(), self.s1.data_ptr(), self.s2.data_ptr(), self.layout.size,
            self.lr.data_ptr(), self.momentum.data_ptr(), self.weight_decay.data_ptr(),
            self.active.data_ptr(),
            self.layout.meta.ctypes.data, len(self.layout.layers), ACT_CODES[self.spec.activation],
            int(classification), int(self.adam), int(t0), members.start, members.stop,
        )  # fmt: skip
        if rc == -1:
            raise MemoryError("fused kernel: out of memory")
        if rc == -2:
            raise IndexError(f"order: a row index outside the {len(x)} rows of x")
        if rc == -3:
            raise IndexError("targets: a class index outside the model's outputs")

    def evaluate(self, x: Tensor, y: Tensor, members: slice) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy (NaN for regression) of ``members`` on (x, y): two (m,).

        y: class indices (N,) or regression targets (N, out). The numbers of
        :func:`weightspace.nets.metrics.evaluate` to float rounding. Thread-safe as :meth:`epoch`.
        """
        x = _contiguous(x, torch.float32)
        classification = y.dtype == torch.int64
        y = _contiguous(y, torch.int64 if classification else torch.float32)
        n = members.stop - members.start
        loss = torch.empty(n, dtype=torch.float64)
        acc = torch.empty(n, dtype=torch.float64)
        rc = self.lib.ws_evaluate(
            x.data_ptr(), x.shape[0], x.shape[1],
            y.data_ptr() if classification else None, None if classification else y.data_ptr(),
            self.params.data_ptr(), self.layout.size, self.layout.meta.ctypes.data,
            len(self.layout.layers), ACT_CODES[self.spec.activation], int(classification),
            members.start, members.stop, loss.data_ptr(), acc.data_ptr(),
        )  # fmt: skip
        if rc == -1:
            raise MemoryError("fused kernel: out of memory")
        if rc == -3:
            raise IndexError("y: a class index outside the model's outputs")
        return loss.float(), acc.float()

    def tensors(self) -> Params:
        """Current parameters as stacked ``state_dict`` tensors (copies)."""
        return self.layout.unpack(self.params)


def _contiguous(t: Tensor, dtype: torch.dtype) -> Tensor:
    if t.device.type != "cpu":
        raise ValueError("the fused kernel runs on CPU tensors")
    return t.to(dtype).contiguous()
