"""GPU backend: Triton kernels for the l_p-distance layer (no CUDA toolkit needed at install).

Contract: ``reference.py``. Inputs may be float32, bfloat16 or float16; all arithmetic is
float32 (inputs are upcast on load), outputs are cast back to the input dtype. With bfloat16
inputs p = inf is accurate up to the final rounding of y; for finite p the backward uses the
float32 y kept by the op, so only the input/output rounding is lost.

Kernels (grid over output tiles, loop over the reduced dimension):

* ``_lp_fwd_kernel``: (BLOCK_B x BLOCK_N) tile of y. p = inf: running max of |x - w| over d
  with a strict ``>`` update of the argmax (lowest index among ties, NaN sticks). Finite p: two
  loops -- max m, then ``sum (|t| / m)^p`` -- and ``y = m * s^(1/p)`` (stable up to p ~ 1000;
  p = 1, 2, 8 use multiplications only).
* ``_lp_bwd_x_kernel`` / ``_lp_bwd_w_kernel``: dense finite-p backward
  ``sign(t) (|t| / y)^(p-1)`` accumulated over n (resp. b) in registers: O((B + N) * D) memory.
* p = inf backward: the O(B*N) gather/scatter of the reference (already a GPU-friendly op).

The kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors (the tests use that).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import reference
from .ops import KernelImpl, define_lp_dist_op

try:  # triton is optional (extra "gpu")
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - any import problem means: no triton backend
    triton = None
    tl = None
    HAVE_TRITON = False

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_B = 64
BLOCK_N = 64
BLOCK_D = 64


def supports(x: Tensor) -> bool:
    """CUDA tensors of a supported dtype, when triton imports."""
    return HAVE_TRITON and x.device.type == "cuda" and x.dtype in _DTYPES


def _pow_kind(p: float) -> int:
    """0: p = inf, 1: p = 1, 2: p = 2, 8: p = 8, -1: any other p (exp2/log2)."""
    if math.isinf(p):
        return 0
    return int(p) if p in (1.0, 2.0, 8.0) else -1


if HAVE_TRITON:

    @triton.jit
    def _fwd_term(a, p, KIND: tl.constexpr):
        # a >= 0, scaled so that a <= 1
        if KIND == 1:
            r = a
        elif KIND == 2:
            r = a * a
        elif KIND == 8:
            a2 = a * a
            a4 = a2 * a2
            r = a4 * a4
        else:
            safe = tl.where(a > 0, a, 1.0)
            r = tl.where(a > 0, tl.exp2(p * tl.log2(safe)), 0.0)
        return r

    @triton.jit
    def _bwd_term(u, p, KIND: tl.constexpr):
        # sign(u) |u|^(p - 1), |u| <= 1
        if KIND == 1:
            r = tl.where(u > 0, 1.0, tl.where(u < 0, -1.0, 0.0))
        elif KIND == 2:
            r = u
        elif KIND == 8:
            u2 = u * u
            u4 = u2 * u2
            r = u4 * u2 * u
        else:
            au = tl.abs(u)
            safe = tl.where(au > 0, au, 1.0)
            mag = tl.where(au > 0, tl.exp2((p - 1.0) * tl.log2(safe)), 0.0)
            r = tl.where(u < 0, -mag, mag)
        return r

    @triton.jit
    def _lp_fwd_kernel(
        xt_ptr, wt_ptr, y_ptr, am_ptr, B, N, D, p,
        KIND: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        ob = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        on = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mb = ob < B
        mn = on < N
        # xt: (D, B), wt: (D, N) so each step of d loads two contiguous vectors
        m = tl.full((BLOCK_B, BLOCK_N), -1.0, tl.float32)
        idx = tl.zeros((BLOCK_B, BLOCK_N), tl.int32)
        for d in range(0, D):
            xv = tl.load(xt_ptr + d * B + ob, mask=mb, other=0.0).to(tl.float32)
            wv = tl.load(wt_ptr + d * N + on, mask=mn, other=0.0).to(tl.float32)
            v = tl.abs(xv[:, None] - wv[None, :])
            if KIND == 0:
                gt = (v > m) | (v != v)
                idx = tl.where(gt, d, idx)
                m = tl.where(gt, v, m)
            else:
                m = tl.maximum(m, v)
        out = ob[:, None] * N + on[None, :]
        mask = mb[:, None] & mn[None, :]
        if KIND == 0:
            tl.store(y_ptr + out, m, mask=mask)
            tl.store(am_ptr + out, idx, mask=mask)
        else:
            inv = tl.where(m > 0, 1.0 / tl.where(m > 0, m, 1.0), 0.0)
            s = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
            for d in range(0, D):
                xv = tl.load(xt_ptr + d * B + ob, mask=mb, other=0.0).to(tl.float32)
                wv = tl.load(wt_ptr + d * N + on, mask=mn, other=0.0).to(tl.float32)
                s += _fwd_term(tl.abs(xv[:, None] - wv[None, :]) * inv, p, KIND)
            s = tl.where(m > 0, s, 1.0)  # s >= 1 where m > 0
            if KIND == 1:
                r = s
            elif KIND == 2:
                r = tl.sqrt(s)
            elif KIND == 8:
                r = tl.sqrt(tl.sqrt(tl.sqrt(s)))
            else:
                r = tl.exp2(tl.log2(s) / p)
            tl.store(y_ptr + out, tl.where(m > 0, m * r, 0.0), mask=mask)

    @triton.jit
    def _lp_bwd_x_kernel(
        x_ptr, w_ptr, ct_ptr, it_ptr, gx_ptr, B, N, D, p,
        KIND: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # gx[b, i] = sum_n c[b, n] * term((x[b, i] - w[n, i]) * inv[b, n]); ct, it: (N, B)
        ob = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        od = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mb = ob < B
        md = od < D
        mask = mb[:, None] & md[None, :]
        xv = tl.load(x_ptr + ob[:, None] * D + od[None, :], mask=mask, other=0.0).to(tl.float32)
        acc = tl.zeros((BLOCK_B, BLOCK_D), tl.float32)
        for n in range(0, N):
            c = tl.load(ct_ptr + n * B + ob, mask=mb, other=0.0)
            inv = tl.load(it_ptr + n * B + ob, mask=mb, other=0.0)
            wv = tl.load(w_ptr + n * D + od, mask=md, other=0.0).to(tl.float32)
            u = (xv - wv[None, :]) * inv[:, None]
            acc += _bwd_term(u, p, KIND) * c[:, None]
        tl.store(gx_ptr + ob[:, None] * D + od[None, :], acc, mask=mask)

    @triton.jit
    def _lp_bwd_w_kernel(
        x_ptr, w_ptr, c_ptr, i_ptr, gw_ptr, B, N, D, p,
        KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # gw[n, i] = -sum_b c[b, n] * term((x[b, i] - w[n, i]) * inv[b, n]); c, inv: (B, N)
        on = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        od = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mn = on < N
        md = od < D
        mask = mn[:, None] & md[None, :]
        wv = tl.load(w_ptr + on[:, None] * D + od[None, :], mask=mask, other=0.0).to(tl.float32)
        acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        for b in range(0, B):
            c = tl.load(c_ptr + b * N + on, mask=mn, other=0.0)
            inv = tl.load(i_ptr + b * N + on, mask=mn, other=0.0)
            xv = tl.load(x_ptr + b * D + od, mask=md, other=0.0).to(tl.float32)
            u = (xv[None, :] - wv) * inv[:, None]
            acc += _bwd_term(u, p, KIND) * c[:, None]
        tl.store(gw_ptr + on[:, None] * D + od[None, :], -acc, mask=mask)


def _check(x: Tensor, w: Tensor) -> None:
    if not HAVE_TRITON:
        raise RuntimeError("the triton kernel backend needs `pip install triton` (extra: lipcert[gpu])")
    if x.dtype not in _DTYPES or w.dtype != x.dtype:
        raise ValueError(f"triton kernels take float32/bfloat16/float16 x and w of one dtype, got {x.dtype}, {w.dtype}")


def _forward(x: Tensor, w: Tensor, p: float, blocks: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    _check(x, w)
    (b, d), n = x.shape, w.shape[0]
    y = torch.empty(b, n, dtype=torch.float32, device=x.device)
    am = torch.empty(b, n, dtype=torch.int32, device=x.device)
    if b == 0 or n == 0:
        return y, am
    if d == 0:
        return y.zero_(), am.zero_()
    bb, bn = blocks or (BLOCK_B, BLOCK_N)
    xt, wt = x.t().contiguous(), w.t().contiguous()
    grid = (triton.cdiv(b, bb), triton.cdiv(n, bn))
    p_arg = 0.0 if math.isinf(p) else float(p)
    _lp_fwd_kernel[grid](xt, wt, y, am, b, n, d, p_arg, KIND=_pow_kind(p), BLOCK_B=bb, BLOCK_N=bn)
    return y, am


def linf_forward(x: Tensor, w: Tensor, blocks: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """p = inf values (float32) and int32 argmax."""
    return _forward(x, w, math.inf, blocks)


def lp_forward(x: Tensor, w: Tensor, p: float, blocks: tuple[int, int] | None = None) -> Tensor:
    """Finite-p values (float32)."""
    return _forward(x, w, p, blocks)[0]


def linf_backward(g: Tensor, x: Tensor, w: Tensor, am: Tensor, need_x: bool, need_w: bool):
    """O(B*N) scatter backward (the reference's gather/scatter ops run well on GPU)."""
    g = g.float()
    return reference.linf_dist_backward(g, x.float(), w.float(), am, need_x, need_w)


def lp_backward(
    g: Tensor, x: Tensor, w: Tensor, y: Tensor, p: float, need_x: bool, need_w: bool,
    blocks: tuple[int, int] | None = None,
):
    """Dense finite-p backward (float32 grads), O((B + N) * D) memory."""
    _check(x, w)
    (b, d), n = x.shape, w.shape[0]
    x, w = x.contiguous(), w.contiguous()
    y = y.float()
    ok = y > 0
    inv = torch.where(ok, 1.0 / torch.where(ok, y, torch.ones_like(y)), torch.zeros_like(y)).contiguous()
    c = torch.where(ok, g.float(), torch.zeros_like(y)).contiguous()
    kind = _pow_kind(p)
    bo, bd = blocks or (BLOCK_B, BLOCK_D)
    gx = gw = None
    if need_x:
        gx = torch.zeros(b, d, dtype=torch.float32, device=x.device)
        if b and n and d:
            grid = (triton.cdiv(b, bo), triton.cdiv(d, bd))
            _lp_bwd_x_kernel[grid](x, w, c.t().contiguous(), inv.t().contiguous(), gx, b, n, d, float(p),
                                   KIND=kind, BLOCK_B=bo, BLOCK_D=bd)
    if need_w:
        gw = torch.zeros(n, d, dtype=torch.float32, device=x.device)
        if b and n and d:
            grid = (triton.cdiv(n, bo), triton.cdiv(d, bd))
            _lp_bwd_w_kernel[grid](x, w, c, inv, gw, b, n, d, float(p), KIND=kind, BLOCK_N=bo, BLOCK_D=bd)
    return gx, gw


IMPL = KernelImpl(linf_forward=linf_forward, lp_forward=lp_forward, linf_backward=linf_backward, lp_backward=lp_backward)

#: Differentiable ``lp_dist(x, w, p)`` through the custom op ``lipcert::lp_dist_triton`` (CUDA).
lp_dist = define_lp_dist_op("lp_dist_triton", "cuda", IMPL)


def linf_dist_argmax(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """p = inf values (in x's dtype) and int32 argmax, no autograd."""
    y, am = linf_forward(x, w)
    return y.to(x.dtype), am
