"""Interval bounds through the head of a hybrid "l-inf-dist Net + MLP" model (Zhang21 code, EMAReport Table 1).

The head (``Linear -> tanh -> Linear``; Linear, ScaledLinear, tanh, ReLU and Identity layers) is
read as a list of operations (:func:`head_ops`) and bounded over a box of feature vectors by
interval arithmetic; the last layer is tightened by bounding each logit difference directly with
the row differences,

    z_y - z_j = (W_y - W_j) . h + (b_y - b_j) >= sum_k min((W_y - W_j)_k lo_k, (W_y - W_j)_k hi_k) + b_y - b_j

(:func:`head_box_bounds`; over the Lipschitz box ``f(x) +- rho``: :func:`head_bounds`).

``sound=True`` (the certificate, :mod:`lipcert.certify.hybrid`): float64 with rounding slack --
each linear layer's box widened by ``gamma_(n+4)(u) (|W| a + |b|)`` (the standard bound on a
length-n dot product, a = the box's magnitudes) for u = 2^-53 (this computation) and u = 2^-24
(float32 inference); tanh by 16 ulp of its value in both precisions (libm/SLEEF/CUDA document
<= 2-4 ulp); the final row-difference bounds subtract twice their float64 rounding bound and the
float32 rounding of the two logits compared. ``sound=False`` (the training objective,
:mod:`lipcert.train.hybrid_objective`): the same formulas without slack, differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import ScaledLinear

from ..numerics import F32_SAFE, U32, U64, gamma  # noqa: F401  (re-exported for the hybrid certifier)

#: Relative error bound (in ulps) of one tanh evaluation.
TANH_ULPS = 16.0


class HeadError(ValueError):
    """The head has a layer the interval bounds do not support."""


@dataclass
class HeadOp:
    kind: str  # "linear" | "tanh" | "relu" | "identity"
    weight: Tensor | None = None  # (out, in), effective weight
    bias: Tensor | None = None  # (out,)


def head_ops(head: nn.Module, dtype: torch.dtype | None = torch.float64) -> list[HeadOp]:
    """The head as a list of operations; weights detached in ``dtype`` (``None``: live, differentiable)."""
    modules = list(head.children()) if isinstance(head, nn.Sequential) else [head]
    ops: list[HeadOp] = []
    for m in modules:
        if isinstance(m, ScaledLinear):
            w = m.weight * m.scale if dtype is None else m.effective_weight(dtype)
            b = None if m.bias is None else (m.bias if dtype is None else m.bias.detach().to(dtype))
            ops.append(HeadOp("linear", w, b))
        elif isinstance(m, nn.Linear):
            w = m.weight if dtype is None else m.weight.detach().to(dtype)
            b = None if m.bias is None else (m.bias if dtype is None else m.bias.detach().to(dtype))
            ops.append(HeadOp("linear", w, b))
        elif isinstance(m, nn.Tanh):
            ops.append(HeadOp("tanh"))
        elif isinstance(m, nn.ReLU):
            ops.append(HeadOp("relu"))
        elif isinstance(m, nn.Identity):
            ops.append(HeadOp("identity"))
        else:
            raise HeadError(
                f"hybrid head layer {type(m).__name__} is not supported (Linear, ScaledLinear, Tanh, ReLU, Identity)"
            )
    if not ops or ops[-1].kind != "linear":
        raise HeadError("the hybrid head must end with a Linear layer")
    return ops


def _linear_box(op: HeadOp, lo: Tensor, hi: Tensor, sound: bool) -> tuple[Tensor, Tensor]:
    w, b = op.weight, op.bias
    wp, wn = w.clamp_min(0), w.clamp_max(0)
    lower = lo @ wp.T + hi @ wn.T
    upper = hi @ wp.T + lo @ wn.T
    if b is not None:
        lower, upper = lower + b, upper + b
    if sound:
        a = torch.maximum(lo.abs(), hi.abs())
        mag = a @ w.abs().T + (0 if b is None else b.abs())
        n = w.shape[1]
        err = 2 * (gamma(n + 4, U64) + gamma(n + 4, U32)) * mag
        # partial sums of a float32 evaluation are <= mag * sqrt(n) (ScaledLinear scales after the
        # product); where they could overflow, NaN marks the box as unusable (never certified)
        err = torch.where(mag * math.sqrt(n) < F32_SAFE, err, math.nan)
        lower, upper = lower - err, upper + err
    return lower, upper


def lipschitz_box(f: Tensor, rho: Tensor, sound: bool = True) -> tuple[Tensor, Tensor]:
    """The feature box ``f +- rho`` (rho per sample), rounded outward when ``sound``."""
    r = rho.view(-1, 1)
    lo, hi = f - r, f + r
    if sound:
        s = 2 * U64 * (f.abs() + r)
        lo, hi = lo - s, hi + s
    return lo, hi


def head_bounds(ops: list[HeadOp], f: Tensor, rho: Tensor, y: Tensor, sound: bool = True) -> tuple[Tensor, Tensor]:
    """Lower bounds (B, K) of ``z_y - z_j`` over the feature box ``f +- rho`` (rho per sample), +inf at j = y,
    and a bound (B,) on the magnitude of every logit over the box.

    ``sound=True``: float64 with the rounding slack of the module docstring. ``sound=False``: the
    same formula without slack, differentiable (training objectives use it in float32).
    """
    return head_box_bounds(ops, *lipschitz_box(f, rho, sound), y, sound)


def head_box_bounds(ops: list[HeadOp], lo: Tensor, hi: Tensor, y: Tensor, sound: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`head_bounds` over any feature box ``[lo, hi]`` (B, F) that contains every feature
    vector (exact and float32-evaluated) of the inputs certified."""
    for op in ops[:-1]:
        if op.kind == "linear":
            lo, hi = _linear_box(op, lo, hi, sound)
        elif op.kind == "tanh":
            tl, th = torch.tanh(lo), torch.tanh(hi)
            if sound:
                t = TANH_ULPS * (U64 + U32) * torch.maximum(tl.abs(), th.abs()) + 1e-300
                tl, th = tl - t, th + t
            lo, hi = tl, th
        elif op.kind == "relu":
            lo, hi = torch.relu(lo), torch.relu(hi)
    last = ops[-1]
    w, b = last.weight, last.bias
    d = w[y][:, None, :] - w[None, :, :]  # (B, K, n) row differences W_y - W_j
    lower = torch.einsum("bkn,bn->bk", d.clamp_min(0), lo) + torch.einsum("bkn,bn->bk", d.clamp_max(0), hi)
    if b is not None:
        lower = lower + (b[y][:, None] - b[None, :])
    a = torch.maximum(lo.abs(), hi.abs())
    logit_mag = a @ w.abs().T + (0 if b is None else b.abs())  # (B, K) bound on |z_k| over the box
    if sound:
        n = w.shape[1]
        dmag = torch.einsum("bkn,bn->bk", d.abs(), a) + (0 if b is None else (b[y][:, None].abs() + b.abs()[None, :]))
        e32 = gamma(n + 4, U32) * logit_mag  # float32 inference error of each logit
        overflow = ~(logit_mag * math.sqrt(n) < F32_SAFE).all(1, keepdim=True)  # as in _linear_box
        e32 = torch.where(overflow, math.nan, e32)
        lower = lower - 2 * gamma(n + 4, U64) * dmag - (e32.gather(1, y[:, None]) + e32)
        logit_mag = logit_mag * (1 + gamma(n + 4, U64)) + e32
    lower = lower.scatter(1, y[:, None], math.inf)
    return lower, logit_mag.amax(1)


__all__ = ["HeadError", "HeadOp", "gamma", "head_bounds", "head_box_bounds", "head_ops", "lipschitz_box"]
