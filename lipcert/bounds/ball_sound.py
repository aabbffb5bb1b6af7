"""Rigorous lower bounds of the worst logit difference over a ball intersected with a box
(BCP, Huang21 App. B Eq. 24), for certificates.

:func:`lipcert.bounds.ball.margin_lower_bounds` is the training-time version (plain arithmetic,
differentiable). Here the same three bounds are evaluated in float64 so that the result is a
theorem about real arithmetic: for the last layer ``z = W h + b`` (stored float64 weights; a formed
matrix within ``gamma(weight_ops)`` relative of the exact one) and every ``h`` in

    S = {h : lo <= h <= hi, ||h - c*|| <= rho},   ||c* - c|| <= c_err,

the exact ``z_y - z_i`` is at least the returned value. With ``a = w_y - w_i``, ``d = b_y - b_i``
and ``R = rho + c_err`` (S lies in the ball of radius R around the computed centre c):

* box: ``sum_j min(a_j lo_j, a_j hi_j) + d``;
* ball: ``a . c + d - ||a|| R``;
* dual (weak duality, any ``mu > 0``; separable in the coordinates):
  ``g(mu) = a . c + d - ||a||^2 / (2 mu) - mu R^2 / 2 + mu / 2 sum_j dist(c_j - a_j / mu, [lo_j, hi_j])^2``,
  the minimum over the box of ``a . h + d + mu / 2 (||h - c||^2 - R^2)``. ``g`` is concave with
  ``g'(mu) = (||h(mu) - c||^2 - R^2) / 2`` (``h(mu)`` the box projection of ``c - a / mu``), so the
  best mu solves ``||h(mu) - c|| = R``; it is found by bisection on log mu (any mu gives a valid
  bound: the bisection needs no rigour). At ``mu = ||a|| / R`` ``g`` is at least the ball bound, and
  as mu -> 0 it tends to the box bound; the maximum over the convex set is attained by the optimal
  mu (strong duality, Slater: c* is feasible with R > 0).

Each term's rounding error is bounded with Higham's ``gamma_n`` (:mod:`lipcert.numerics`) and
subtracted; the errors of ``a`` and ``d`` themselves (one rounded subtraction, plus the formed
matrix's) are bounded by ``|a - fl(a)| . max(|lo|, |hi|) + |d - fl(d)|`` over the box.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..numerics import U64, gamma

#: bisection steps on log mu over [mu_max * 1e-8, mu_max] (mu_max = ||a|| / R): mu to a factor 1 + 2e-8
BISECTION_STEPS = 30
MU_RANGE = 1e-8


def _low(value: Tensor, mag: Tensor, n: int) -> Tensor:
    """A lower bound of the exact value of an expression computed as ``value`` with at most n
    rounded operations on terms of total magnitude ``mag`` (one more rounding: the subtraction)."""
    return value - 2 * gamma(n + 6) * (mag + value.abs()) - 1e-300


def _up(value: Tensor, n: int) -> Tensor:
    """An upper bound of the exact value of a nonnegative expression computed as ``value`` with n roundings."""
    return value * (1 + 2 * gamma(n + 4)) + 1e-300


def _dual(a: Tensor, c: Tensor, lo: Tensor, hi: Tensor, mu: Tensor, ac_low: Tensor, a_sq_up: Tensor, r: Tensor) -> Tensor:
    """Rigorous lower bounds (B, K) of ``g(mu) - d`` (module docstring) at the float64 numbers ``mu`` (B, K) > 0."""
    n = a.shape[-1]
    m = mu.unsqueeze(2)
    q = a / m
    v = c.unsqueeze(1) - q
    ev = 4 * U64 * (c.abs().unsqueeze(1) + q.abs())  # |v_exact - v| (a division and a subtraction)
    below = lo.unsqueeze(1) - v
    above = v - hi.unsqueeze(1)
    slack_b = 4 * U64 * (below.abs() + v.abs() + lo.abs().unsqueeze(1)) + 2 * ev
    slack_a = 4 * U64 * (above.abs() + v.abs() + hi.abs().unsqueeze(1)) + 2 * ev
    dist = torch.maximum(torch.maximum(below - slack_b, above - slack_a), torch.zeros_like(v))
    sq = dist.square().sum(2) * (1 - 2 * gamma(n + 4))  # nonnegative terms: a lower bound
    e_term = (mu * sq * 0.5) * (1 - 4 * U64)
    b_term = _up(a_sq_up / (2 * mu), 2)
    c_term = _up(mu * r.square() * 0.5, 3)
    g = ac_low - b_term - c_term + e_term
    g = g - 8 * U64 * (ac_low.abs() + b_term + c_term + e_term) - 1e-300
    return torch.where(torch.isfinite(g), g, torch.full_like(g, -torch.inf))


def _best_mu(a: Tensor, c: Tensor, lo: Tensor, hi: Tensor, r: Tensor, a_norm: Tensor) -> Tensor:
    """(B, K) mu near the maximiser of g: bisection on log mu of ``||h(mu) - c|| = R`` (no rigour needed)."""
    top = a_norm / r.clamp_min(1e-300)
    lo_log = torch.log(top.clamp_min(1e-300) * MU_RANGE)
    hi_log = torch.log(top.clamp_min(1e-300))
    cc = c.unsqueeze(1)
    for _ in range(BISECTION_STEPS):
        mid = (lo_log + hi_log) / 2
        mu = torch.exp(mid).unsqueeze(2)
        h = torch.maximum(torch.minimum(cc - a / mu, hi.unsqueeze(1)), lo.unsqueeze(1))
        grad_pos = (h - cc).square().sum(2) > r.square()  # g' > 0: the optimum is at larger mu
        lo_log = torch.where(grad_pos, mid, lo_log)
        hi_log = torch.where(grad_pos, hi_log, mid)
    return torch.exp((lo_log + hi_log) / 2)


@torch.no_grad()
def sound_margin_lower_bounds(
    weight: Tensor,
    bias: Tensor,
    y: Tensor,
    center: Tensor,
    rho: Tensor,
    lo: Tensor,
    hi: Tensor,
    center_error: Tensor | None = None,
    weight_ops: int = 0,
) -> dict[str, Tensor]:
    """Rigorous lower bounds (B, K) of ``min_{h in S} (z_y - z_i)`` (module docstring), +inf at i = y.

    ``weight`` (K, D), ``bias`` (K,) float64; ``y`` (B,); ``center`` (B, ...) the computed clean
    features, flattened to D; ``rho`` (B,) an upper bound of the ball's radius around the exact
    features; ``lo`` / ``hi`` like ``center``: a box containing every feature vector of the set;
    ``center_error`` (B,) an upper bound of ``||c* - c||`` (0 when None). Returns ``{"bound": the
    best of the three, "box", "ball", "dual"}``.
    """
    if weight.dtype != torch.float64:
        raise ValueError("sound margin bounds need float64 tensors")
    b = center.shape[0]
    c = center.reshape(b, -1).to(torch.float64)
    lo_f, hi_f = lo.reshape(b, -1).to(torch.float64), hi.reshape(b, -1).to(torch.float64)
    if bool((lo_f > hi_f).any()):
        raise ValueError("empty box: lo > hi")
    n = c.shape[1]
    rho_t = torch.as_tensor(rho, dtype=torch.float64, device=c.device).expand(b)
    err_c = torch.zeros_like(rho_t) if center_error is None else torch.as_tensor(center_error, dtype=torch.float64, device=c.device).expand(b)
    r = ((rho_t + err_c) * (1 + 4 * U64)).unsqueeze(1)  # (B, 1)

    a = weight[y].unsqueeze(1) - weight.unsqueeze(0)  # (B, K, D), each entry one rounding
    d = bias[y].unsqueeze(1) - bias.unsqueeze(0)  # (B, K)
    # |a_exact - a| and |d_exact - d|; then their effect over the box
    ea = 2 * U64 * a.abs()
    if weight_ops:
        ea = ea + gamma(weight_ops) * (weight[y].abs().unsqueeze(1) + weight.abs().unsqueeze(0)) * (1 + 4 * U64)
    hmag = torch.maximum(lo_f.abs(), hi_f.abs())
    coef = _up(torch.einsum("bkd,bd->bk", ea, hmag), n) + _up(2 * U64 * d.abs(), 1)

    # box
    terms = torch.minimum(a * lo_f.unsqueeze(1), a * hi_f.unsqueeze(1))
    box_val = terms.sum(2) + d
    box = _low(box_val, terms.abs().sum(2) + d.abs(), n + 1)
    # ball
    ac = torch.einsum("bkd,bd->bk", a, c)
    ac_mag = torch.einsum("bkd,bd->bk", a.abs(), c.abs()) + d.abs()
    ac_low = _low(ac + d, ac_mag, n + 1)
    a_sq = a.square().sum(2)
    a_sq_up = _up(a_sq, n)
    a_norm_up = _up(a_sq_up.sqrt(), 1)
    ball_term = _up(a_norm_up * r, 1)
    ball = ac_low - ball_term
    ball = ball - 4 * U64 * (ac_low.abs() + ball_term) - 1e-300
    # dual at the bisected mu and at mu = ||a|| / R (>= the ball bound up to rounding)
    a_norm = a_sq.sqrt()
    mu_star = _best_mu(a, c, lo_f, hi_f, r, a_norm)
    mus = [mu_star, a_norm / r.clamp_min(1e-300)]
    dual = torch.full_like(box, -torch.inf)
    for mu in mus:
        ok = (mu > 0) & torch.isfinite(mu)
        g = _dual(a, c, lo_f, hi_f, torch.where(ok, mu, torch.ones_like(mu)), ac_low, a_sq_up, r)
        dual = torch.maximum(dual, torch.where(ok, g, torch.full_like(g, -torch.inf)))
    out = {"box": box, "ball": ball, "dual": dual}
    best = torch.maximum(torch.maximum(box, ball), dual)
    own = torch.zeros_like(best, dtype=torch.bool)
    own[torch.arange(b, device=own.device), y] = True
    res = {}
    for name, v in [("bound", best), *out.items()]:
        v = v - coef
        v = v - 4 * U64 * (v.abs() + coef) - 1e-300
        res[name] = v.masked_fill(own, torch.inf)
    return res


__all__ = ["sound_margin_lower_bounds"]
