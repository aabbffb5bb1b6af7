"""Kernel dispatch for the l_p-distance operation behind every l-inf-dist layer.

Public entry points (all take x of shape (B, D) and w of shape (N, D)):

* :func:`lp_dist` -- differentiable ``||x_b - w_n||_p`` for p >= 1 or inf.
* :func:`linf_dist_argmax` -- p = inf values and int32 argmax, no autograd.

Backends register themselves in ``BACKENDS``; ``"auto"`` picks the fastest one that supports
the tensors' device and dtype and falls back to the plain-torch ``reference`` backend:

* ``cpu`` -- native C++ kernels (``cpu_kernels.cpp``, built on first use, see ``native.py``),
  CPU float32/float64. If they cannot be built, a one-line RuntimeWarning is emitted once and
  the reference is used.
* ``triton`` -- Triton kernels for CUDA tensors (float32, bfloat16, float16 inputs; fp32
  arithmetic), when ``triton`` is installed (``pip install lipcert[gpu]``).
* ``reference`` -- plain torch, any device and dtype.

The environment variable ``LIPCERT_KERNEL`` (or :func:`set_backend`) forces a backend by name;
:func:`backend_info` says in one line which backend a tensor would use. ``LIPCERT_NO_NATIVE=1``
disables the native build. Every backend is also reachable as a torch custom op
(``torch.ops.lipcert.lp_dist_cpu`` / ``lp_dist_triton``), so ``torch.compile`` of models using
:func:`lp_dist` works without graph breaks.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import cpu, native, reference


@dataclass(frozen=True)
class Backend:
    """A kernel implementation: ``supports(x)`` says whether it can run on x's device/dtype."""

    name: str
    lp_dist: Callable[[Tensor, Tensor, float], Tensor]
    linf_dist_argmax: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    supports: Callable[[Tensor], bool]
    priority: int = 0


BACKENDS: dict[str, Backend] = {}
_forced: str | None = None


def register_backend(backend: Backend) -> None:
    """Make a backend selectable by name and by ``auto`` (higher priority wins)."""
    BACKENDS[backend.name] = backend


register_backend(
    Backend(
        name="reference",
        lp_dist=reference.lp_dist,
        linf_dist_argmax=reference.linf_dist_forward,
        supports=lambda x: True,
        priority=0,
    )
)


_triton_module = None  # lipcert.nn.kernels.triton_backend once a CUDA tensor asked for it


def _triton_supports(x: Tensor) -> bool:
    global _triton_module
    if x.device.type != "cuda":
        return False
    if _triton_module is None:
        from . import triton_backend

        _triton_module = triton_backend
    return _triton_module.supports(x)


def _triton_lp_dist(x: Tensor, w: Tensor, p: float) -> Tensor:
    return _triton_module.lp_dist(x, w, p)


def _triton_linf_dist_argmax(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    return _triton_module.linf_dist_argmax(x, w)


register_backend(Backend("cpu", cpu.lp_dist, cpu.linf_dist_argmax, cpu.supports, priority=10))
register_backend(Backend("triton", _triton_lp_dist, _triton_linf_dist_argmax, _triton_supports, priority=20))


def set_backend(name: str | None) -> None:
    """Force a backend by name for all later calls (``None`` or ``"auto"`` restores automatic choice)."""
    global _forced
    if name in (None, "auto"):
        _forced = None
        return
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; available: {sorted(BACKENDS)}")
    _forced = name


def select_backend(x: Tensor) -> Backend:
    """The backend used for tensor ``x``: forced one if set, else the best that supports x."""
    return BACKENDS[_backend_name(x.device.type, x.dtype)]


def _assume_constant_result(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo (~1-3 s) at import
    time: that decorator imports dynamo and only sets this marker (tests/nn/test_kernels.py checks
    that it still does); once dynamo is loaded its own decorator is used."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@_assume_constant_result
def _backend_name(device_type: str, dtype: torch.dtype) -> str:
    # Depends only on device type, dtype and settings, so torch.compile may run it once while
    # tracing and treat the result as a constant (no graph break in the dispatch).
    x = _probe(device_type, dtype)
    name = _forced or os.environ.get("LIPCERT_KERNEL") or "auto"
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"LIPCERT_KERNEL={name!r} is not a kernel backend; available: {sorted(BACKENDS)}")
        if not BACKENDS[name].supports(x):
            raise ValueError(
                f"kernel backend {name!r} cannot run on {device_type} {dtype} tensors"
                + (f" ({native.unavailable_reason()})" if name == "cpu" and native.unavailable_reason() else "")
                + "; unset LIPCERT_KERNEL or call set_backend('auto')"
            )
        return name
    best = max((b for b in BACKENDS.values() if b.supports(x)), key=lambda b: b.priority)
    if best.name == "reference" and device_type == "cpu" and native.unavailable_reason() is not None:
        native.notify_fallback()
    return best.name


def _probe(device_type: str, dtype: torch.dtype) -> Tensor:
    return torch.empty(0, dtype=dtype, device=device_type)


def backend_info(x: Tensor | None = None) -> str:
    """One line naming the backend used for ``x`` (default: a CPU float32 tensor) and its state."""
    import torch

    if x is None:
        x = torch.empty(0)
    b = select_backend(x)
    if b.name == "cpu":
        lib = native.load()
        isa = "AVX-512" if lib is not None and lib.lc_has_avx512() else "portable vectors"
        return f"lipcert kernels: cpu (native C++, {isa}, {torch.get_num_threads()} threads)"
    if b.name == "triton":
        import triton

        return f"lipcert kernels: triton {triton.__version__} on {torch.cuda.get_device_name(x.device)}"
    why = native.unavailable_reason() if x.device.type == "cpu" else None
    return "lipcert kernels: reference (plain torch" + (f"; native unavailable: {why}" if why else "") + ")"


def lp_dist(x: Tensor, w: Tensor, p: float) -> Tensor:
    """Differentiable l_p distance matrix (B, N) between rows of x (B, D) and w (N, D)."""
    p = reference.check_p(p)
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"lp_dist expects x (B, D) and w (N, D), got {tuple(x.shape)} and {tuple(w.shape)}")
    return select_backend(x).lp_dist(x, w, p)


def linf_dist_argmax(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """p = inf distance values (B, N) and int32 argmax (lowest index among ties); no autograd."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"linf_dist_argmax expects x (B, D) and w (N, D), got {tuple(x.shape)} and {tuple(w.shape)}")
    return select_backend(x).linf_dist_argmax(x.detach(), w.detach())


__all__ = ["Backend", "BACKENDS", "backend_info", "lp_dist", "linf_dist_argmax", "register_backend", "select_backend", "set_backend"]
