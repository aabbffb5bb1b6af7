"""Plain-torch reference for the l_p-distance kernel (the contract every fast kernel meets).

``y[b, n] = || x[b, :] - w[n, :] ||_p`` for x of shape (B, D) and w of shape (N, D).

* p = inf: exact maximum; the argmax is the *lowest* index among ties (torch's rule).
  Backward is a scatter: only the argmax coordinate carries gradient (Zhang et al. 2021, §5).
* finite p >= 1: the l_p relaxation of Zhang21 §5, computed stably as
  ``m * (sum_i (|t_i| / m)^p)^(1/p)`` with ``m = max_i |t_i|`` so that p up to ~1000 stays
  finite. Backward is the dense formula ``dy/dx_i = sign(t_i) (|t_i| / y)^(p - 1)``.

Memory stays O(B*N + N*D + one chunk): the (B, n, D) difference tensor is only ever built for
a chunk of output units whose size is capped by ``CHUNK_ELEMENTS``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Upper bound on the number of elements of any (B, n, D) temporary (64 MiB in float32).
CHUNK_ELEMENTS = 1 << 24


def _chunks(batch: int, out_features: int, in_features: int) -> list[tuple[int, int]]:
    """Split the output dimension so each (B, n, D) temporary has <= CHUNK_ELEMENTS elements."""
    per_unit = max(1, batch * in_features)
    step = max(1, CHUNK_ELEMENTS // per_unit)
    return [(s, min(s + step, out_features)) for s in range(0, out_features, step)]


def check_p(p: float) -> float:
    """Validate an l_p exponent: a float >= 1 or +inf."""
    p = float(p)
    if not p >= 1.0:  # also catches NaN (written without math.isnan so torch.compile can trace it)
        raise ValueError(f"p must be >= 1 or inf for an l_p-distance layer, got {p}")
    return p


def linf_dist_forward(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Values (B, N) and int32 argmax (B, N) of ``max_i |x[b, i] - w[n, i]|``."""
    batch, _ = x.shape
    out_features, in_features = w.shape
    values = x.new_empty(batch, out_features)
    argmax = torch.empty(batch, out_features, dtype=torch.int32, device=x.device)
    for s, e in _chunks(batch, out_features, in_features):
        diff = (x[:, None, :] - w[None, s:e, :]).abs_()
        v, a = diff.max(dim=-1)
        values[:, s:e] = v
        argmax[:, s:e] = a.to(torch.int32)
    return values, argmax


def linf_dist_backward(
    grad_out: Tensor, x: Tensor, w: Tensor, argmax: Tensor, need_x: bool = True, need_w: bool = True
) -> tuple[Tensor | None, Tensor | None]:
    """O(B*N) scatter backward of the p = inf distance."""
    batch, in_features = x.shape
    out_features = w.shape[0]
    idx = argmax.long()
    x_sel = torch.gather(x, 1, idx)  # x[b, argmax[b, n]]
    w_sel = torch.gather(w, 1, idx.t()).t()  # w[n, argmax[b, n]]
    g = grad_out * torch.sign(x_sel - w_sel)
    grad_x = grad_w = None
    if need_x:
        grad_x = torch.zeros_like(x).scatter_add_(1, idx, g)
    if need_w:
        flat = (torch.arange(out_features, device=x.device)[None, :] * in_features + idx).reshape(-1)
        grad_w = torch.zeros(out_features * in_features, dtype=w.dtype, device=w.device)
        grad_w.index_add_(0, flat, -g.reshape(-1))
        grad_w = grad_w.view(out_features, in_features)
    return grad_x, grad_w


def lp_dist_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    """Stable finite-p distance ``m * (sum_i (|t_i|/m)^p)^(1/p)``; 0 where all |t_i| = 0."""
    batch, _ = x.shape
    out_features, in_features = w.shape
    out = x.new_empty(batch, out_features)
    for s, e in _chunks(batch, out_features, in_features):
        diff = (x[:, None, :] - w[None, s:e, :]).abs_()
        m = diff.amax(dim=-1, keepdim=True)
        safe = torch.where(m > 0, m, torch.ones_like(m))
        ratio_sum = (diff / safe).pow_(p).sum(dim=-1)
        out[:, s:e] = m[..., 0] * ratio_sum.pow(1.0 / p)
    return out


def lp_dist_backward(
    grad_out: Tensor, x: Tensor, w: Tensor, y: Tensor, p: float, need_x: bool = True, need_w: bool = True
) -> tuple[Tensor | None, Tensor | None]:
    """Dense backward ``dy[b,n]/dx[b,i] = sign(t) (|t| / y)^(p-1)``, t = x[b,i] - w[n,i]; 0 where y = 0."""
    batch, in_features = x.shape
    out_features = w.shape[0]
    grad_x = torch.zeros_like(x) if need_x else None
    grad_w = torch.zeros_like(w) if need_w else None
    safe_y = torch.where(y > 0, y, torch.ones_like(y))
    g = torch.where(y > 0, grad_out, torch.zeros_like(grad_out))
    for s, e in _chunks(batch, out_features, in_features):
        t = x[:, None, :] - w[None, s:e, :]
        r = (t.abs() / safe_y[:, s:e, None]).pow_(p - 1.0) * torch.sign(t) * g[:, s:e, None]
        if grad_x is not None:
            grad_x += r.sum(dim=1)
        if grad_w is not None:
            grad_w[s:e] -= r.sum(dim=0)
    return grad_x, grad_w


class LpDistFunction(torch.autograd.Function):
    """Autograd wrapper around the reference forward/backward (any p >= 1 or inf)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, p: float) -> Tensor:  # type: ignore[override]
        if math.isinf(p):
            y, argmax = linf_dist_forward(x, w)
            ctx.save_for_backward(x, w, argmax)
        else:
            y = lp_dist_forward(x, w, p)
            ctx.save_for_backward(x, w, y)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, w, saved = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_out = grad_out.contiguous()
        if math.isinf(ctx.p):
            gx, gw = linf_dist_backward(grad_out, x, w, saved, need_x, need_w)
        else:
            gx, gw = lp_dist_backward(grad_out, x, w, saved, ctx.p, need_x, need_w)
        return gx, gw, None


def lp_dist(x: Tensor, w: Tensor, p: float) -> Tensor:
    """Reference l_p distance matrix with autograd, see the module docstring."""
    return LpDistFunction.apply(x, w, check_p(p))


def lp_dist_naive(x: Tensor, w: Tensor, p: float) -> Tensor:
    """Textbook broadcast formula (materializes B x N x D): only for tests on tiny shapes."""
    diff = (x[:, None, :] - w[None, :, :]).abs()
    if math.isinf(p):
        return diff.amax(dim=-1)
    m = diff.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(diff.dtype).tiny)
    return m[..., 0] * (diff / m).pow(p).sum(-1).pow(1.0 / p)
