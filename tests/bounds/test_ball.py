"""Worst-case logit differences over ball and box (BCP, Huang21 Eq. 24): sound and no worse than either set."""

from __future__ import annotations

import torch

from lipcert.bounds import margin_lower_bounds
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)


def _setup(b=6, k=4, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    bias = torch.randn(k, generator=g, dtype=torch.float64)
    c = torch.randn(b, d, generator=g, dtype=torch.float64)
    lo = c - torch.rand(b, d, generator=g, dtype=torch.float64) * 0.6
    hi = c + torch.rand(b, d, generator=g, dtype=torch.float64) * 0.6
    y = torch.randint(0, k, (b,), generator=g)
    return w, bias, c, lo, hi, y


def _feasible(c, lo, hi, rho, n=4000, seed=1):
    """Points of box ∩ ball: sample the box, keep those inside the ball, plus projected extremes."""
    g = torch.Generator().manual_seed(seed)
    pts = lo + (hi - lo) * torch.rand(n, *c.shape, generator=g, dtype=c.dtype)
    inside = (pts - c).norm(dim=2) <= rho[None, :]
    return pts, inside


def test_sound_against_sampled_points_and_never_worse_than_box_or_ball():
    w, bias, c, lo, hi, y = _setup()
    rho = torch.full((c.shape[0],), 0.5, dtype=torch.float64)
    got = margin_lower_bounds(w, bias, y, c, rho, lo, hi)
    ball = margin_lower_bounds(w, bias, y, c, rho)
    a = w[y].unsqueeze(1) - w.unsqueeze(0)
    d = bias[y].unsqueeze(1) - bias.unsqueeze(0)
    m, r = (lo + hi) / 2, (hi - lo) / 2
    box = torch.einsum("bkd,bd->bk", a, m) - torch.einsum("bkd,bd->bk", a.abs(), r) + d
    own = torch.nn.functional.one_hot(y, w.shape[0]).bool()
    assert (got[~own] >= ball[~own] - 1e-12).all() and (got[~own] >= box[~own] - 1e-12).all()
    assert (got[own] == 0).all()
    pts, inside = _feasible(c, lo, hi, rho)
    z = pts @ w.T + bias  # (n, B, K)
    diff = z.gather(2, y.view(1, -1, 1).expand(pts.shape[0], -1, 1)) - z  # z_y - z_i
    diff = diff.masked_fill(~inside.unsqueeze(2), float("inf")).amin(0)
    assert (got <= diff + 1e-9).all()


def test_ball_only_is_exact():
    """Without a box the minimum of a linear function over a ball is attained: c - rho a / ||a||."""
    w, bias, c, _, _, y = _setup(seed=2)
    rho = 0.3
    got = margin_lower_bounds(w, bias, y, c, rho)
    a = w[y].unsqueeze(1) - w.unsqueeze(0)
    point = c.unsqueeze(1) - rho * a / a.norm(dim=2, keepdim=True).clamp_min(1e-300)
    val = (a * point).sum(2) + bias[y].unsqueeze(1) - bias.unsqueeze(0)
    own = torch.nn.functional.one_hot(y, w.shape[0]).bool()
    torch.testing.assert_close(got[~own], val[~own])


def test_intersection_strictly_helps_somewhere_and_is_differentiable():
    w, bias, c, lo, hi, y = _setup(b=16, seed=3)
    rho = torch.full((16,), 0.45, dtype=torch.float64)
    a = w[y].unsqueeze(1) - w.unsqueeze(0)
    m, r = (lo + hi) / 2, (hi - lo) / 2
    box = torch.einsum("bkd,bd->bk", a, m) - torch.einsum("bkd,bd->bk", a.abs(), r) + bias[y].unsqueeze(1) - bias.unsqueeze(0)
    ball = margin_lower_bounds(w, bias, y, c, rho)
    got = margin_lower_bounds(w, bias, y, c, rho, lo, hi)
    own = torch.nn.functional.one_hot(y, w.shape[0]).bool()
    assert (got[~own] > torch.maximum(box, ball)[~own] + 1e-6).any()
    wt = w.clone().requires_grad_(True)
    margin_lower_bounds(wt, bias, y, c, rho, lo, hi).sum().backward()
    assert torch.isfinite(wt.grad).all() and wt.grad.abs().sum() > 0
