"""Exact bounds of l-inf-dist neurons over a box (the interval step of the l-inf interval certificate).

For a neuron ``u(z) = ||z - w||_inf`` and a box ``l <= z <= u`` (per coordinate):

* upper = ``max_i max(|l_i - w_i|, |u_i - w_i|) = max(dist(l, w), dist(u, w))``;
* lower = ``max_i dist(w_i, [l_i, u_i]) = max(0, max_i max(l_i - w_i, w_i - u_i))``
  (0 when ``l_i <= w_i <= u_i``, else ``min(|l_i - w_i|, |u_i - w_i|)``).

Both are attained, so they are the exact range of each neuron (the Zhang21
authors' bound). Both are computed with the l-inf distance kernel (fast backends apply):
the lower bound uses ``max_i (l_i - w_i) = dist(l + M, w) - M`` and
``max_i (w_i - u_i) = dist(u - M, w) - M`` for a shift M so large that every difference has
one sign. The shift costs precision: :func:`box_rounding_error` bounds the error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels import linf_dist_argmax


def _dist(x: Tensor, w: Tensor) -> Tensor:
    return linf_dist_argmax(x.contiguous(), w)[0]


def shift_for(lo: Tensor, hi: Tensor, w: Tensor) -> float:
    """A power of two M with ``l + M - w >= 0`` and ``w - (u - M) >= 0`` for every entry."""
    span = max(float(w.max()) - float(lo.min()), float(hi.max()) - float(w.min()), 1.0)
    return 2.0 ** math.ceil(math.log2(span) + 1)


@torch.no_grad()
def linf_box_bounds(lo: Tensor, hi: Tensor, w: Tensor) -> tuple[Tensor, Tensor, float]:
    """Lower and upper bounds (B, N) of ``||z - w_n||_inf`` over the boxes ``lo[b] <= z <= hi[b]``.

    Returns ``(lower, upper, shift)``; ``shift`` is the M used for the lower bound (needed by
    :func:`box_rounding_error`). Computed in the dtype of the inputs; exact up to rounding.
    """
    if lo.shape != hi.shape or lo.dim() != 2 or w.dim() != 2 or lo.shape[1] != w.shape[1]:
        raise ValueError(f"expected lo, hi (B, D) and w (N, D), got {tuple(lo.shape)}, {tuple(hi.shape)}, {tuple(w.shape)}")
    w = w.to(lo.dtype)
    upper = torch.maximum(_dist(lo, w), _dist(hi, w))
    if lo.numel() == 0 or w.numel() == 0:
        return torch.zeros_like(upper), upper, 1.0
    m = shift_for(lo, hi, w)
    low_side = _dist(lo + m, w) - m  # max_i (l_i - w_i)
    high_side = _dist(hi - m, w) - m  # max_i (w_i - u_i)
    lower = torch.maximum(low_side, high_side).clamp_min_(0.0)
    return lower, upper, m


def box_rounding_error(in_absmax: Tensor, w_max: float, out_absmax: Tensor, shift: float, unit: float) -> Tensor:
    """Bound on the error of :func:`linf_box_bounds` plus a bias add.

    The upper bound uses the same operations as the forward pass (``2 u (|z| + |w| + |out|)``);
    the lower bound adds, subtracts and removes the shift M: three roundings of numbers below
    ``M + |z| + |w|``. A factor 2 covers second-order terms.
    """
    return 2.0 * unit * (3.0 * (shift + in_absmax + w_max) + out_absmax)


def linf_box_bounds_naive(lo: Tensor, hi: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """The defining formulas on a (B, N, D) tensor: only for tests on tiny shapes."""
    a = (lo[:, None, :] - w[None]).abs()
    b = (hi[:, None, :] - w[None]).abs()
    upper = torch.maximum(a, b).amax(-1)
    inside = (lo[:, None, :] < w[None]) & (w[None] < hi[:, None, :])
    lower = torch.where(inside, torch.zeros_like(a), torch.minimum(a, b)).amax(-1)
    return lower, upper
