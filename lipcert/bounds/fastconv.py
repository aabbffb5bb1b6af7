"""Faster convolution adjoints for the *training* hot path (estimates only; never certificates).

On CPU, ``conv_transpose2d`` (and the input gradient of ``conv2d``, which is the same operation)
is 2-8x slower than the forward convolution for the thin layers of 4C3F / 6C2F (measured with
torch 2.13's oneDNN backend; worst for one input channel). The adjoint of a strided, zero-padded
convolution is itself a stride-1 convolution followed by a pixel shuffle (polyphase form):

with ``M = ceil(k / s)`` and ``K'[(c, r1, r2), o, m1, m2] = K[o, c, s1 (M1-1-m1) + r1, s2 (M2-1-m2) + r2]``
(zero where the index leaves the kernel), ``Z = conv2d(y, K', padding=M-1)`` has one channel per
(input channel, output phase); interleaving the phases gives ``T[c, s1 q + r1, s2 q' + r2] =
Z[(c, r1, r2), q, q']`` and ``W^T y = T[:, p1 : p1 + H, p2 : p2 + W]`` (zeros beyond T); the
interleaving is one strided copy per phase. Proof: the
adjoint is ``x[I] = sum_{o, a : s o + a = I + p} K[a] y[o]``; writing ``I + p = s q + r`` forces
``a = s m + r`` and ``o = q - m``, a full correlation of y with the phase-r kernel.

:func:`conv_adjoint` computes it; :class:`FastConv2d` is ``conv2d`` whose backward uses it for the
input gradient (the weight gradient is torch's own). Results equal torch's up to float rounding
(summation order); ``tests/bounds/test_fastconv.py`` compares them on random shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def adjoint_kernel(weight: Tensor, stride: Sequence[int]) -> Tensor:
    """``K'`` (C_in s1 s2, C_out, M1, M2) of the module docstring (differentiable in ``weight``)."""
    s1, s2 = int(stride[0]), int(stride[1])
    c_out, c_in, kh, kw = weight.shape
    m1, m2 = -(-kh // s1), -(-kw // s2)
    if s1 == 1 and s2 == 1:
        return weight.transpose(0, 1).flip(2, 3)
    out = weight.new_zeros(c_in, s1, s2, c_out, m1, m2)
    wt = weight.transpose(0, 1)  # (c_in, c_out, kh, kw)
    for r1 in range(s1):
        for r2 in range(s2):
            sub = wt[:, :, r1::s1, r2::s2]  # taps s m + r, m = 0..
            a, b = sub.shape[2], sub.shape[3]
            # position m' = M - 1 - m holds tap m: flip and right-align
            out[:, r1, r2, :, m1 - a :, m2 - b :] = sub.flip(2, 3)
    return out.reshape(c_in * s1 * s2, c_out, m1, m2)


def conv_adjoint(
    y: Tensor,
    kernel: Tensor,
    in_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
) -> Tensor:
    """``W^T y`` for ``conv2d(., W, stride, padding)`` on inputs (C, H, W) = ``in_shape``, given
    ``kernel = adjoint_kernel(W, stride)`` (module docstring)."""
    s1, s2 = int(stride[0]), int(stride[1])
    p1, p2 = int(padding[0]), int(padding[1])
    c, h, w = (int(v) for v in in_shape)
    m1, m2 = kernel.shape[2], kernel.shape[3]
    z = F.conv2d(y, kernel, padding=(m1 - 1, m2 - 1))
    if s1 == 1 and s2 == 1:
        t = z[:, :, p1 : p1 + h, p2 : p2 + w]
        if t.shape[2] < h or t.shape[3] < w:
            t = F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2]))
        return t
    # interleave the phases: x[I] = Z_r[q] with I + p = s q + r, one strided copy per phase
    rows = [_phase(r, p1, s1, h) for r in range(s1)]
    cols = [_phase(r, p2, s2, w) for r in range(s2)]
    need1 = max(q0 + n for _, q0, n in rows)
    need2 = max(q0 + n for _, q0, n in cols)
    if need1 > z.shape[2] or need2 > z.shape[3]:
        z = F.pad(z, (0, max(0, need2 - z.shape[3]), 0, max(0, need1 - z.shape[2])))
    b = z.shape[0]
    zv = z.view(b, c, s1, s2, z.shape[2], z.shape[3])
    out = z.new_empty(b, c, h, w)
    for r1, (i0, q1, n1) in enumerate(rows):
        for r2, (j0, q2, n2) in enumerate(cols):
            if n1 and n2:
                out[:, :, i0::s1, j0::s2] = zv[:, :, r1, r2, q1 : q1 + n1, q2 : q2 + n2]
    return out


def _phase(r: int, p: int, s: int, n: int) -> tuple[int, int, int]:
    """Output positions ``I = i0, i0 + s, ...`` (< n) of phase r, ``(I + p) = s q + r``: (i0, q(i0), count)."""
    i0 = (r - p) % s
    return i0, (i0 + p) // s, len(range(i0, n, s))


class FastConv2d(torch.autograd.Function):
    """``conv2d(x, weight, bias, stride, padding)``; the input gradient by :func:`conv_adjoint`.

    No double backward (training objectives only need first derivatives).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = tuple(stride), tuple(padding)
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):  # noqa: D102
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        g = g.contiguous()
        if ctx.needs_input_grad[0]:
            gx = conv_adjoint(g, adjoint_kernel(weight, ctx.stride), x.shape[1:], ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(
                g, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1, [False, True, False]
            )[1]
        if ctx.needs_input_grad[2]:
            gb = g.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None


def fast_conv2d(
    x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], bias: Tensor | None = None
) -> Tensor:
    """:class:`FastConv2d` (plain ``F.conv2d`` when nothing needs a gradient)."""
    stride, padding = (int(stride[0]), int(stride[1])), (int(padding[0]), int(padding[1]))
    needs = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if not (torch.is_grad_enabled() and needs):
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)
    return FastConv2d.apply(x, weight, bias, stride, padding)


__all__ = ["FastConv2d", "adjoint_kernel", "conv_adjoint", "fast_conv2d"]
