"""One cache of rigorous per-operator norm bounds, shared by every engine during one run.

A certificate such as ``--bound best`` reads the same layers through several engines: Huang21's
global and local-upper bounds and the float32 error walk (:class:`~lipcert.bounds.analysis.L2Bounds`),
and LipLT (:mod:`lipcert.bounds.liplt`, whose atoms are the same layer operators). Each asks every
layer operator for ``norm_upper()`` and ``abs_norm_upper()`` (a float64 SVD, or the polyphase FFT
bound of a convolution). Inside :func:`shared_norms` every such bound is computed once:

* an operator that can be cached states a *structural key* (its class, what it computes, the
  input shape, stride, padding, forming operations, the matrix's shape, dtype and device) and the
  tensors the bound is a function of (its matrix, input scale folded in);
* the cache keeps a private copy of those tensors next to each value and returns the value only
  if the operator's tensors are *equal in content* (``torch.equal``) to the copy. Soundness
  therefore rests on nothing but the tensors themselves: a weight changed in place (through
  ``.data``, numpy, or anything that bypasses version counters) no longer matches, and its bound
  is computed again. Two float64 copies of one model share their bounds.

Outside a :func:`shared_norms` block nothing is cached (training calls pay nothing and keep
nothing). The certify driver opens one block per certify call and ``lipcert bounds`` one per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor


class NormCache:
    """Values of rigorous norm bounds by structural key, each with copies of its tensors.

    ``computed`` / ``reused`` count misses and hits (for tests and reports)."""

    def __init__(self) -> None:
        self._entries: dict[tuple, list[tuple[tuple[Tensor, ...], float]]] = {}
        self.computed = 0
        self.reused = 0

    def get(self, key: tuple, tensors: Sequence[Tensor], compute: Callable[[], float]) -> float:
        """The value stored under ``key`` for tensors equal to ``tensors``, else ``compute()`` (stored)."""
        tensors = tuple(t.detach() for t in tensors)
        for stored, value in self._entries.get(key, []):
            if all(_same(a, b) for a, b in zip(stored, tensors)):
                self.reused += 1
                return value
        value = compute()
        self._entries.setdefault(key, []).append((tuple(t.clone() for t in tensors), value))
        self.computed += 1
        return value


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))


_ACTIVE: ContextVar[NormCache | None] = ContextVar("lipcert_norm_cache", default=None)


@contextmanager
def shared_norms() -> Iterator[NormCache]:
    """Share norm bounds inside the block (a nested block shares its enclosing block's cache)."""
    outer = _ACTIVE.get()
    if outer is not None:
        yield outer
        return
    cache = NormCache()
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)


def cached(key: tuple | None, tensors: Sequence[Tensor], compute: Callable[[], float]) -> float:
    """``compute()``, or its value from the active cache (``key`` None: the operator cannot be cached)."""
    cache = _ACTIVE.get()
    if cache is None or key is None:
        return compute()
    return cache.get(key, tensors, compute)


__all__ = ["NormCache", "cached", "shared_norms"]
