"""Log-sum-exp distance: the smooth l-inf surrogate of EMAReport Eq. 6.

``y[b, n] = (1/p) log sum_i exp(p |x[b, i] - w[n, i]|)`` for x (B, D), w (N, D), p > 0.

Facts used by the layers (all for p > 0):

* ``max_i |t_i| <= y <= max_i |t_i| + log(D) / p`` -- it tends to the l-inf distance as p grows.
* Its gradient in t is ``softmax(p |t|) * sign(t)``, whose l1 norm is 1, so y is 1-Lipschitz
  w.r.t. l-inf for *every* p (unlike the l_p relaxation, which is ``D^(1/p)``-Lipschitz,
  Zhang22 Prop. 4.1). A network of LSE-relaxed l-inf-dist layers is therefore certifiable by the
  margin certificate at any point of training.

Computed stably as ``m + (1/p) log sum_i exp(p (|t_i| - m))`` with ``m = max_i |t_i|``.
Like the reference l_p kernel, memory stays O(B*N + one chunk of (B, n, D)). This is a
plain-torch implementation (no native kernel yet; exponents are clamped above the subnormal range,
see ``_exp_floor``); it is only used when a layer is put in
``relaxation="lse"`` mode with finite p.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels.reference import CHUNK_ELEMENTS

#: Bound, in units of the unit roundoff, on the error of one ``exp`` or ``log`` evaluation.
#: IEEE 754 does not require correctly rounded transcendental functions; glibc, SLEEF (used by
#: PyTorch's vectorised CPU code) and CUDA document errors of at most 1-4 ulp. We use 16.
TRANSCENDENTAL_ULPS = 16.0


def _chunks(batch: int, out_features: int, in_features: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(1, batch * in_features))
    return [(s, min(s + step, out_features)) for s in range(0, out_features, step)]


def check_lse_p(p: float) -> float:
    p = float(p)
    if math.isnan(p) or p <= 0:
        raise ValueError(f"the log-sum-exp relaxation needs p > 0 (or inf), got {p}")
    return p


def _exp_floor(dtype: torch.dtype) -> float:
    """Exponents are clamped to >= log(tiny) + 1 before ``exp``: smaller terms would be subnormal
    (a microcode assist each on x86, ~10x slower at p >= 20) and are below tiny anyway. Raising a
    term to e * tiny changes the sum s >= 1 by < D * e * tiny, i.e. y by < D * 3 tiny / p -- far
    below the rounding bound :func:`lse_rounding_error` (whose smallest term is 2u (k + D) / p)."""
    return math.log(torch.finfo(dtype).tiny) + 1.0


def lse_dist_forward(x: Tensor, w: Tensor, p: float) -> Tensor:
    batch = x.shape[0]
    out_features, in_features = w.shape
    out = x.new_empty(batch, out_features)
    lo = _exp_floor(x.dtype)
    for s, e in _chunks(batch, out_features, in_features):
        a = (x[:, None, :] - w[None, s:e, :]).abs_()
        m = a.amax(dim=-1, keepdim=True)
        total = a.sub_(m).mul_(p).clamp_min_(lo).exp_().sum(dim=-1)
        out[:, s:e] = m[..., 0] + total.log_() / p
    return out


def lse_dist_backward(
    grad_out: Tensor, x: Tensor, w: Tensor, y: Tensor, p: float, need_x: bool = True, need_w: bool = True
) -> tuple[Tensor | None, Tensor | None]:
    """``dy/dx_i = exp(p (|t_i| - y)) sign(t_i)`` (a softmax of p|t| times the sign)."""
    batch, in_features = x.shape
    out_features = w.shape[0]
    grad_x = torch.zeros_like(x) if need_x else None
    grad_w = torch.zeros_like(w) if need_w else None
    lo = _exp_floor(x.dtype)
    for s, e in _chunks(batch, out_features, in_features):
        t = x[:, None, :] - w[None, s:e, :]
        r = t.abs().sub_(y[:, s:e, None]).mul_(p).clamp_min_(lo).exp_()
        r.mul_(t.sign_()).mul_(grad_out[:, s:e, None])  # t is not needed after its sign
        if grad_x is not None:
            grad_x += r.sum(dim=1)
        if grad_w is not None:
            grad_w[s:e] -= r.sum(dim=0)
    return grad_x, grad_w


class LseDistFunction(torch.autograd.Function):
    """Autograd wrapper: forward and backward both chunked over output units."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, p: float) -> Tensor:  # type: ignore[override]
        y = lse_dist_forward(x, w, p)
        ctx.save_for_backward(x, w, y)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, w, y = ctx.saved_tensors
        gx, gw = lse_dist_backward(grad_out.contiguous(), x, w, y, ctx.p, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return gx, gw, None


def lse_dist(x: Tensor, w: Tensor, p: float) -> Tensor:
    """Differentiable LSE distance matrix (B, N) between rows of x (B, D) and w (N, D) (EMAReport Eq. 6)."""
    p = check_lse_p(p)
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"lse_dist expects x (B, D) and w (N, D), got {tuple(x.shape)} and {tuple(w.shape)}")
    if math.isinf(p):
        from .kernels import lp_dist

        return lp_dist(x, w, p)
    return LseDistFunction.apply(x, w, p)


def lse_dist_naive(x: Tensor, w: Tensor, p: float) -> Tensor:
    """Textbook formula via ``torch.logsumexp`` (materializes B x N x D): only for tests."""
    return torch.logsumexp(p * (x[:, None, :] - w[None, :, :]).abs(), dim=-1) / p


def lse_rounding_error(in_features: int, p: float, in_absmax: Tensor, w_max: float, out_absmax: Tensor, unit: float) -> Tensor:
    """Bound on |computed - exact| of one LSE neuron (+ bias), unit roundoff ``unit``.

    With A = |x|max + |w|max: the differences t_i are off by <= u A and y is 1-Lipschitz in t;
    forming ``p (|t_i| - m)`` adds <= 4 u A p to each exponent, i.e. <= 4 u A to y after the
    division by p; each exp and the log are off by TRANSCENDENTAL_ULPS ulps (relative), the sum of
    D positive terms by (D - 1) u (relative), which the log turns into absolute errors divided by
    p; the final ``m + .`` and the bias add <= u |out| each. A factor 2 covers second-order terms.
    """
    k = TRANSCENDENTAL_ULPS
    a = in_absmax + w_max
    per_p = (k + in_features + k * math.log(max(in_features, 1))) / p
    return 2.0 * unit * (5.0 * a + 2.0 * out_absmax + per_p)
