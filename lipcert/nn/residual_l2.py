"""The sqrt(rho)-Lipschitz residual layer of Fazlyab23 Proposition 3.1 (dense version).

    h(x) = sqrt(rho) x - (alpha + beta) / sqrt(rho) * W^T T phi(W x + b)            (Fazlyab23 Eq. 12)

is sqrt(rho)-Lipschitz in l2 whenever ``W W^T <= 2 rho / (alpha + beta)^2 T^{-1}`` for a diagonal
positive definite T and phi slope-restricted in [alpha, beta] (Fazlyab23 Prop. 3.1; rho = 1 gives the
1-Lipschitz layer of Araujo et al. 2023, Fazlyab23 ref. [39]). T is chosen analytically so the condition
holds by construction (Fazlyab23 §3, "using the same techniques outlined in [39]"):

* ``t_rule="aol"``: ``T_ii = 2 rho / ((alpha+beta)^2 sum_j |W W^T|_ij)``: then
  ``2 rho / (alpha+beta)^2 T^{-1} - W W^T`` is diagonally dominant with a non-negative diagonal,
  hence positive semidefinite (AOL, Fazlyab23 ref. [37]);
* ``t_rule="sll"``: ``T_ii = 2 rho / ((alpha+beta)^2 sum_j |W W^T|_ij q_j / q_i)`` with learnable
  q > 0 (SLL, Fazlyab23 ref. [39]; Gershgorin with the weights q).

``rho`` is learnable (``learn_rho``, stored as log rho) so a cascade of layers need not be
contractive (Fazlyab23 §3, the motivation of Prop. 3.1). The layer states its Eq. 17 parts
(``liplt_parts``: H = sqrt(rho) I, G = -(alpha+beta)/sqrt(rho) W^T T, the W and the activation) so
``lipcert.bounds.liplt`` can bound networks made of it more tightly than the product of the
sqrt(rho_i) (Fazlyab23 §3 "this upper bound can still be very crude").

``forward(x, t=None)`` accepts a precomputed T (the certifier computes it once so the network it
certifies and the one it bounds are the same function). ``error_bound`` states a rigorous
elementwise bound on the rounding error of ``forward`` (used by the l2 pairwise certificate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..numerics import gamma
from .activations import ReLU

#: activations the layer accepts, with their slope bounds (alpha, beta)
RESIDUAL_ACTIVATIONS = {"relu": (ReLU, 0.0, 1.0)}
T_RULES = ("aol", "sll")
_TINY = 1e-30


class SqrtRhoResidual(nn.Module):
    """Fazlyab23 Eq. 12 on flat features (see module docstring).

    Args:
        features: width of x.
        inner: rows of W (default: features).
        activation: "relu" (slopes [0, 1]).
        rho: initial rho (> 0).
        learn_rho: train log(rho).
        t_rule: "aol" or "sll".
    """

    def __init__(self, features: int, inner: int | None = None, activation: str = "relu", rho: float = 1.0,
                 learn_rho: bool = True, t_rule: str = "aol") -> None:
        super().__init__()
        if activation not in RESIDUAL_ACTIVATIONS:
            raise ValueError(f"SqrtRhoResidual supports activations {sorted(RESIDUAL_ACTIVATIONS)}, got {activation!r}")
        if t_rule not in T_RULES:
            raise ValueError(f"t_rule must be one of {T_RULES}, got {t_rule!r}")
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        inner = int(inner or features)
        cls, self.alpha, self.beta = RESIDUAL_ACTIVATIONS[activation]
        if self.alpha + self.beta <= 0:
            raise ValueError("Prop. 3.1 needs alpha + beta > 0")
        self.act = cls()
        self.features, self.inner, self.t_rule = int(features), inner, t_rule
        self.weight = nn.Parameter(torch.empty(inner, self.features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(inner))
        log_rho = torch.tensor(math.log(rho))
        if learn_rho:
            self.log_rho = nn.Parameter(log_rho)
        else:
            self.register_buffer("log_rho", log_rho)
        if t_rule == "sll":
            self.log_q = nn.Parameter(torch.zeros(inner))

    # ------------------------------------------------------------------ parts
    def rho(self) -> Tensor:
        return self.log_rho.exp()

    def t_diag(self) -> Tensor:
        """T of Prop. 3.1 (inner,), satisfying ``W W^T <= 2 rho / (alpha+beta)^2 T^{-1}`` exactly."""
        w = self.weight
        gram = (w @ w.T).abs()
        if self.t_rule == "sll":
            q = self.log_q.exp().to(w.dtype)
            sums = (gram * q[None, :]).sum(1) / q
        else:
            sums = gram.sum(1)
        ab = self.alpha + self.beta
        return 2 * self.rho().to(w.dtype) / (ab * ab * sums.clamp_min(_TINY))

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(h, g'): ``h(x) = h x - g' W^T T phi(W x + b)`` with h = sqrt(rho), g' = (alpha+beta)/sqrt(rho)."""
        sr = self.rho().sqrt().to(self.weight.dtype)
        return sr, (self.alpha + self.beta) / sr

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        t = self.t_diag() if t is None else t
        h, g = self.coefficients()
        xf = x.reshape(x.shape[0], -1)
        p = self.act(F.linear(xf, self.weight, self.bias))
        r = F.linear(p * t, self.weight.T)
        return (h * xf - g * r).reshape(x.shape)

    def liplt_parts(self, t: Tensor | None = None) -> dict:
        """Eq. 17 parts for LipLT: H = h I, G = g W^T diag(t) (g = -g'), W, activation (h, g 0-d
        tensors, so bounds built from them are differentiable in rho)."""
        t = self.t_diag() if t is None else t
        h, g = self.coefficients()
        return {"weight": self.weight, "t": t, "h": h, "g": -g, "act": self.act}

    # ------------------------------------------------------------------ rounding
    @torch.no_grad()
    def error_bound(self, x: Tensor, e_in: Tensor, t: Tensor, unit: float) -> tuple[Tensor, Tensor]:
        """Forward ``x`` (computed, B x features) and a rigorous elementwise bound on the error of
        the output given an elementwise bound ``e_in`` on the error of x (unit roundoff ``unit``,
        any summation order; h, g', t taken as the stored constants)."""
        h, g = self.coefficients()
        h, g = float(h), float(g)
        w = self.weight
        xf, ef = x.reshape(x.shape[0], -1), e_in.reshape(x.shape[0], -1)
        n, m = self.features, self.inner

        z = F.linear(xf, w, self.bias)
        e_z = ef @ w.abs().T + gamma(n + 2, unit) * (xf.abs() @ w.abs().T + self.bias.abs())
        p = self.act(z)
        q = p * t
        e_q = e_z * t.abs() + 2 * unit * q.abs()  # the product, and t itself if it was rounded once
        r = F.linear(q, w.T)
        e_r = e_q @ w.abs() + gamma(m + 2, unit) * (q.abs() @ w.abs())
        out = h * xf - g * r
        e_out = abs(h) * ef + abs(g) * e_r + 2 * unit * (abs(h) * xf.abs() + abs(g) * r.abs()) * (1 + 4 * unit) + unit * out.abs()
        return out.reshape(x.shape), (e_out * (1 + 8 * unit)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"features={self.features}, inner={self.inner}, t_rule={self.t_rule}"


__all__ = ["RESIDUAL_ACTIVATIONS", "SqrtRhoResidual", "T_RULES"]
