"""``maximum`` / ``minimum`` / ``clamp`` with torch's values and a backward without boolean tensors.

Why hand-written: on the CPU builds of torch this project runs on, ops that make or read
``bool`` tensors (comparisons, ``where``, ``masked_fill``, the backward of ``torch.maximum`` /
``torch.minimum`` / ``clamp`` with tensor bounds) run 3-10x slower than float arithmetic on the
same tensors (2-core Intel Xeon guest, one thread, 256 x 8 x 28 x 28 float32, forward + backward:
``torch.maximum`` 37-49 ms, ``where(a >= b, a, b)`` 28 ms, :func:`maximum` here 8-10 ms;
``minimum(relu(z), theta)`` 34-36 ms with torch's, 12-16 ms with this one; BENCHMARKS.md,
"Boolean tensors are slow on CPU"; ``benchmarks/bench_elementwise.py``). The forward values are
``torch.maximum`` / ``torch.minimum`` themselves (bit-identical). The backward keeps a one-byte
mask per element (as ``torch.where`` keeps its condition), made by an in-place float comparison,
and splits the gradient with float multiplications; it differs from torch's only on exact ties.

Gradient at a tie ``a == b`` (torch splits it 1/2, 1/2): all of it goes to ``a``, the first
argument. With ``minimum(relu(z), theta)`` at ``theta = 0`` this sends nothing to theta where the
neuron is off (z < 0), the one-sided derivative for raising theta. Off ties the two agree exactly:
``fl(a - b) > 0`` iff ``a > b`` for finite floats (gradual underflow), so the selection is exact.

Broadcasting is supported (gradients are summed back to each argument's shape). NaN inputs give
the forward's NaN and send the gradient to ``a``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _to_shape(g: Tensor, shape: torch.Size) -> Tensor:
    return g if g.shape == shape else g.sum_to_size(shape)


def _b_wins(d: Tensor) -> Tensor:
    """``d > 0`` as uint8 (one byte per element, like the ``bool`` mask ``torch.where`` keeps),
    made through an in-place float comparison (the fast path); ``d`` is a fresh temporary."""
    return d.gt_(0.0).to(torch.uint8)


def _split(ctx, g: Tensor):
    (b_wins,) = ctx.saved_tensors
    gb = g * b_wins.to(g.dtype)  # g has the broadcast shape, as the mask
    ga = g - gb
    return _to_shape(ga, ctx.shapes[0]), _to_shape(gb, ctx.shapes[1])


class _Maximum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.shapes = (a.shape, b.shape)
        ctx.save_for_backward(_b_wins(b - a))  # b - a > 0 exactly where b > a
        return torch.maximum(a, b)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _split(ctx, g)


class _Minimum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.shapes = (a.shape, b.shape)
        ctx.save_for_backward(_b_wins(a - b))  # a - b > 0 exactly where b < a
        return torch.minimum(a, b)

    @staticmethod
    def backward(ctx, g: Tensor):
        return _split(ctx, g)


def _needs_grad(a: Tensor, b: Tensor) -> bool:
    return torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)


def maximum(a: Tensor, b: Tensor) -> Tensor:
    """``torch.maximum(a, b)`` (same values); gradient to ``a`` where ``a >= b``, else to ``b``."""
    return _Maximum.apply(a, b) if _needs_grad(a, b) else torch.maximum(a, b)


def minimum(a: Tensor, b: Tensor) -> Tensor:
    """``torch.minimum(a, b)`` (same values); gradient to ``a`` where ``a <= b``, else to ``b``."""
    return _Minimum.apply(a, b) if _needs_grad(a, b) else torch.minimum(a, b)


def clamp(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``torch.clamp(x, lo, hi)`` = ``minimum(maximum(x, lo), hi)`` (same values, also for lo > hi)
    with the fast backward (ties go to ``x``)."""
    return minimum(maximum(x, lo), hi)


__all__ = ["clamp", "maximum", "minimum"]
