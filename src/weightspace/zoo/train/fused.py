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
the source, the compiler and the CPU's features (``$WEIGHTSPACE_CACHE`` or
``~/.cache/weightspace``), and called through :mod:`ctypes`, which releases the GIL.

It covers what :class:`weightspace.zoo.train.hand.HandBackprop` covers (every activation, with or
without biases, classification and regression, SGD with momentum and Adam) on CPU; weight
normalization and GPUs use the torch path. Its numbers match the torch path's to float
rounding (``tests/nets/test_parity.py``), not bit for bit: a zoo records which trainer made it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weightspace.nets.spec import MLPSpec, Params, bias_name, weight_name

SOURCE = Path(__file__).with_name("csrc") / "fused_mlp.cpp"
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp-simd", "-std=c++17"]
PAD = 16  # output widths are padded to a multiple of this (one AVX-512 vector)
ACT_CODES = {"relu": 0, "tanh": 1, "gelu": 2, "sigmoid": 3, "leaky_relu": 4, "identity": 5}
ABI_VERSION = 4


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
    """The compiled kernel (built into the cache on first use). Raises FusedUnavailable."""
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
        "\n".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_features()]).encode()
    ).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"fused_mlp-{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed: concurrent builds cannot clash, and an
        # interrupted one leaves no broken library behind.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        cmd = [cxx, *FLAGS, "-shared", "-fPIC", str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            os.unlink(tmp)
            err = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FusedUnavailable(f"building {SOURCE.name} failed: {err}")
        os.replace(tmp, path)
    lib = ctypes.CDLL(str(path))
    if lib.ws_abi_version() != ABI_VERSION:
        raise FusedUnavailable(f"{path} is a different kernel version; delete it")
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    lib.ws_train_epoch.restype = ctypes.c_int
    lib.ws_train_epoch.argtypes = [
        p, i64, i64, p, i64, p, p, i64, i64, i64, p, i64,  # data, order, batch, shuffle
        p, p, p, i64, p, p, p, p,  # params, state, lr / momentum / decay, active
        p, i64, i32, i32, i32, i64, i64, i64,  # layers, activation, kinds, t0, members
    ]  # fmt: skip
    lib.ws_evaluate.restype = ctypes.c_int
    lib.ws_evaluate.argtypes = [p, i64, i64, p, p, p, i64, p, i64, i32, i32, i64, i64, p, p]
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
