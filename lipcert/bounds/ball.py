"""Worst-case logit differences over a ball intersected with a box (BCP, Huang21 App. B Eq. 24).

For the last layer ``z = W h + b`` and the set ``S = {h : lo <= h <= hi, ||h - c|| <= rho}``
(box from interval propagation, ball from a Lipschitz bound of the layers before), a lower bound
of ``min_{h in S} (z_y - z_i)`` for every class i. With ``a = w_y - w_i`` and ``d = b_y - b_i``:

* box alone: ``a . m - |a| . r + d`` (m, r: box midpoint and radius);
* ball alone: ``a . c - ||a|| rho + d``;
* Lagrangian dual of the intersection: for any ``mu >= 0``,
  ``g(mu) = min_{lo <= h <= hi} a . h + d + mu/2 (||h - c||^2 - rho^2)`` is a lower bound (weak
  duality: on S the bracket is <= 0), attained at ``h = clip(c - a / mu, lo, hi)``.
  ``g(0)`` is the box bound and ``g(||a|| / rho)`` is at least the ball bound, so taking the best
  of a few ``mu = t ||a|| / rho`` is never worse than either and is differentiable.

Used by the BCP and GloRo worst logits (``lipcert.losses.l2``) with ``rho = eps * L`` where L is a
global or local Lipschitz bound of the layers before the last. The certificate's version (float64,
rigorous rounding slack, the dual's multiplier optimised) is :mod:`lipcert.bounds.ball_sound`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..nn import elementwise

DEFAULT_MUS = (0.25, 0.5, 1.0, 2.0, 4.0)


def margin_lower_bounds(
    weight: Tensor,
    bias: Tensor,
    y: Tensor,
    center: Tensor,
    rho: Tensor | float,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    mus: Sequence[float] = DEFAULT_MUS,
    fast: bool = False,
) -> Tensor:
    """Lower bounds (B, K) of ``z_y - z_i`` over the ball (and box, if given); 0 at i = y.

    ``weight`` (K, D), ``bias`` (K,), ``y`` (B,), ``center`` (B, D) or (B, ...) flattened to D,
    ``rho`` scalar or (B,), ``lo``/``hi`` like ``center`` or None (ball only: the GloRo bound).
    ``fast`` (training objectives): the projection onto the box by
    :func:`lipcert.nn.elementwise.clamp` instead of ``maximum(minimum(.))`` -- the same values
    (for lo <= hi) and a faster backward; the gradient differs only where an argument ties a bound
    exactly.
    """
    b = center.shape[0]
    c = center.reshape(b, -1)
    rho_t = torch.as_tensor(rho, dtype=c.dtype, device=c.device)
    rho_t = rho_t.expand(b) if rho_t.dim() == 0 else rho_t.reshape(b)
    a = weight[y].unsqueeze(1) - weight.unsqueeze(0)  # (B, K, D)
    d = bias[y].unsqueeze(1) - bias.unsqueeze(0)  # (B, K)
    a_norm = a.norm(dim=2)
    ac = torch.einsum("bkd,bd->bk", a, c)
    best = ac - a_norm * rho_t[:, None] + d  # ball
    if lo is not None and hi is not None:
        lo_f, hi_f = lo.reshape(b, -1), hi.reshape(b, -1)
        m, r = (lo_f + hi_f) / 2, (hi_f - lo_f) / 2
        box = torch.einsum("bkd,bd->bk", a, m) - torch.einsum("bkd,bd->bk", a.abs(), r) + d
        best = torch.maximum(best, box)
        safe_rho = rho_t.clamp_min(1e-12)[:, None]
        for t in mus:
            mu = (t * a_norm / safe_rho).clamp_min(1e-12)  # (B, K)
            v = c.unsqueeze(1) - a / mu.unsqueeze(2)
            if fast:
                h = elementwise.clamp(v, lo_f.unsqueeze(1), hi_f.unsqueeze(1))
            else:
                h = torch.maximum(torch.minimum(v, hi_f.unsqueeze(1)), lo_f.unsqueeze(1))
            g = (a * h).sum(2) + d + 0.5 * mu * ((h - c.unsqueeze(1)).square().sum(2) - rho_t[:, None].square())
            best = torch.maximum(best, g)
    own = torch.zeros_like(best, dtype=torch.bool)
    own[torch.arange(b, device=own.device), y] = True
    return best.masked_fill(own, 0.0)


__all__ = ["DEFAULT_MUS", "margin_lower_bounds"]
