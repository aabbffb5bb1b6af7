"""Certified Radius Maximization (CRM) loss, Fazlyab23 Eq. 5-8: pure functions of logits and pairwise bounds.

* :func:`pairwise_radii` -- ``R_i = (z_y - z_i) / L_yi`` for i != y (Fazlyab23 Eq. 5 terms; +inf at i = y).
  ``min_i R_i`` is a certified l2 radius when every ``L_yi`` is an upper bound (Eq. 4-5).
* :func:`soft_radius` -- ``R_soft = -(1/t) log sum_{i != y} exp(-t R_i)`` (Fazlyab23 Eq. 6), a smooth lower
  bound of ``min_i R_i`` within ``log(K-1) / t`` (Fazlyab23 Prop. 2.1, Eq. 7).
* :func:`crm_loss` -- Fazlyab23 Eq. 8:
  ``E[-gamma_lower(z, y)] + lambda E[1{correct} g(R_soft)]`` with ``-gamma_lower = CE(z, y)``
  (the paper's "differentiable lower bound on the logit gap", and the authors' code).

Choices (Fazlyab23 leaves g open; the authors' public code fixes it -- see docs/liplt-crm.md):

* ``g="linear"`` (default): ``g(R) = -R``, so the penalty is ``(1/t) LSE_i(-t R_i)`` -- exactly the
  authors' "g = (1/t) logsumexp_j(-t R_j)". Decreasing, and its gradient does not vanish for
  large radii (the cap ``r0`` stops the push instead).
* ``g="exp"``: ``g(R) = (1/t) exp(-t R) = (1/t) sum_i exp(-t R_i)``, the authors' alternative
  "(1/t) exp(-t min R)" in its smooth form: decreasing and bounded, it fades out for large radii.
* The indicator ``1{gamma > 0}`` is "correctly classified"; with ``r0`` the penalty also skips
  samples whose smallest radius ``min_i R_i`` already exceeds r0 (authors' cap R0: radii beyond
  the target add nothing to the certified accuracy at eps < r0 and would cost clean accuracy).
* The expectation of Eq. 8 is a mean over the whole batch (inactive samples contribute 0), so
  lambda keeps its meaning when few samples are active.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

G_CHOICES = ("linear", "exp")


def pairwise_radii(logits: Tensor, y: Tensor, pairwise: Tensor, min_lipschitz: float = 1e-12) -> Tensor:
    """``R_i = (z_y - z_i) / L_yi`` (B, K), +inf at i = y (Fazlyab23 Eq. 5). ``pairwise`` (K, K) or (B, K, K)."""
    lyi = pairwise[y] if pairwise.dim() == 2 else pairwise[torch.arange(y.shape[0], device=y.device), y]
    true = logits.gather(1, y[:, None])
    r = (true - logits) / lyi.to(logits.dtype).clamp_min(min_lipschitz)
    own = F.one_hot(y, logits.shape[1]).bool()
    return r.masked_fill(own, math.inf)


def soft_radius(radii: Tensor, t: float) -> Tensor:
    """Fazlyab23 Eq. 6: ``-(1/t) log sum_{i != y} exp(-t R_i)`` from :func:`pairwise_radii` (inf at y)."""
    if not t > 0:
        raise ValueError(f"temperature t must be > 0, got {t}")
    return -torch.logsumexp(-t * radii, dim=1) / t


@dataclass
class CRMOutput:
    loss: Tensor
    ce: Tensor
    penalty: Tensor  # lambda * E[1{active} g(R_soft)]
    soft_radius: Tensor  # (B,)
    min_radius: Tensor  # (B,) detached
    active: Tensor  # (B,) bool


def crm_loss(
    logits: Tensor,
    y: Tensor,
    pairwise: Tensor,
    t: float = 5.0,
    lam: float = 30.0,
    r0: float | None = None,
    g: str = "linear",
) -> CRMOutput:
    """Fazlyab23 Eq. 8 with ``-CE`` as the logit-margin lower bound (see module docstring for g, r0)."""
    if g not in G_CHOICES:
        raise ValueError(f"g must be one of {G_CHOICES}, got {g!r}")
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    ce = F.cross_entropy(logits, y)
    radii = pairwise_radii(logits, y, pairwise)
    rs = soft_radius(radii, t)
    with torch.no_grad():
        rmin = radii.amin(dim=1)
        active = logits.argmax(1) == y
        if r0 is not None:
            active &= rmin < r0
    gval = -rs if g == "linear" else torch.exp(-t * rs) / t
    penalty = lam * torch.where(active, gval, torch.zeros_like(gval)).sum() / max(y.shape[0], 1)
    return CRMOutput(ce + penalty, ce, penalty, rs, rmin, active)


__all__ = ["CRMOutput", "G_CHOICES", "crm_loss", "pairwise_radii", "soft_radius"]
