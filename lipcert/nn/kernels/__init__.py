"""Kernel dispatch for the l_p-distance operation behind every l-inf-dist layer.

Public entry points (all take x of shape (B, D) and w of shape (N, D)):

* :func:`lp_dist` -- differentiable ``||x_b - w_n||_p`` for p >= 1 or inf.
* :func:`linf_dist_argmax` -- p = inf values and int32 argmax, no autograd.

Backends register themselves in ``BACKENDS``; ``"auto"`` picks the fastest one that supports
the tensors' device and falls back to the plain-torch ``reference`` backend. The environment
variable ``LIPCERT_KERNEL`` (or :func:`set_backend`) forces a backend by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from . import reference


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
    name = _forced or os.environ.get("LIPCERT_KERNEL") or "auto"
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"LIPCERT_KERNEL={name!r} is not a kernel backend; available: {sorted(BACKENDS)}")
        return BACKENDS[name]
    candidates = [b for b in BACKENDS.values() if b.supports(x)]
    return max(candidates, key=lambda b: b.priority)


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


__all__ = ["Backend", "BACKENDS", "lp_dist", "linf_dist_argmax", "register_backend", "select_backend", "set_backend"]
