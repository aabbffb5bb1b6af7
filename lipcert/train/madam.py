"""MAdam: multiplicative Adam (Bernstein, Vahdat, Yue & Liu 2020, "Learning compositional functions
via multiplicative weight updates"), tried on l-inf-dist nets in EMAReport §2.2 / Table 3.

Per parameter tensor W, with g its gradient:

    v <- beta v + (1 - beta) g^2;   g* = clamp(g / sqrt(v / (1 - beta^t)), -g_bound, g_bound)
    W <- W * exp(-lr * sign(W) * g*);   W <- clamp(W, -W_max, W_max)

with ``W_max = p_scale * rms(W at the first step)``. Every weight moves by a *relative* amount,
so the update respects each layer's scale; a weight never changes sign and an exactly zero
parameter (e.g. a zero-initialised bias) never moves -- train such parameters with another
optimiser or accept that they stay at zero. Written from the paper's algorithm (no code copied).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from .optim import register_optimizer


class MAdam(Optimizer):
    """Multiplicative Adam; ``lr`` is the relative step (paper default 0.01)."""

    def __init__(self, params: Iterable, lr: float = 0.01, beta: float = 0.999, p_scale: float = 3.0, g_bound: float = 10.0) -> None:
        if lr <= 0 or not 0.0 <= beta < 1.0 or p_scale <= 0 or g_bound <= 0:
            raise ValueError(f"MAdam needs lr > 0, 0 <= beta < 1, p_scale > 0, g_bound > 0; got {lr}, {beta}, {p_scale}, {g_bound}")
        super().__init__(params, dict(lr=lr, beta=beta, p_scale=p_scale, g_bound=g_bound))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, g_bound = group["lr"], group["beta"], group["g_bound"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["max"] = (group["p_scale"] * p.detach().double().pow(2).mean().sqrt()).to(torch.float64)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                v = state["exp_avg_sq"]
                v.mul_(beta).addcmul_(g, g, value=1.0 - beta)
                correction = 1.0 - beta ** float(state["step"])
                denom = (v / correction).sqrt()
                g_norm = torch.where(denom > 0, g / denom.clamp_min(torch.finfo(denom.dtype).tiny), torch.zeros_like(g))
                g_norm.clamp_(-g_bound, g_bound)
                p.mul_(torch.exp(-lr * g_norm * torch.sign(p)))
                bound = float(state["max"])
                p.clamp_(-bound, bound)
        return loss


def _build(groups, cfg) -> MAdam:
    """``optim.name: madam``: ``optim.lr`` is the relative step; beta 0.999, p_scale 3, g_bound 10 (paper defaults)."""
    return MAdam(groups, lr=cfg.lr)


register_optimizer("madam", _build)
