"""Losses for l2 Lipschitz-bound training (Huang21 §3.3, App. B, App. C): pure functions of logits and bounds.

* :func:`lmt_worst_logits` -- LMT: ``z*_i = z_i + sqrt(2) eps L`` for i != y (Huang21 §3.3).
* :func:`bcp_worst_logits` -- BCP: ``z*_i = z_y - m_i`` with ``m_i`` a lower bound of ``z_y - z_i``
  over the perturbation set (Huang21 Eq. 24; bounds from ``lipcert.bounds.margin_lower_bounds``).
* :func:`gloro_logits` -- GloRo: the logits plus one extra "not certifiable" logit
  ``max_{i != y} z*_i`` (Huang21 App. B).
* :func:`robust_mixture_loss` -- ``(1 - lam) CE(z, y) + lam CE(z*, y)`` (Huang21 Eq. 25).
* :func:`pairwise_worst_logits` -- ``z*_i = z_i + eps L_yi`` for i != y with pairwise bounds (the
  GloRo / LMT baselines of Fazlyab23 §4 as the authors' code forms them, ``createGloroPerturbation``
  / ``createLmtPerturbation``); :func:`pairwise_from` builds ``L_yi`` from pairwise, per-class
  (``L_y + L_i``) or global (``sqrt(2) L``) constants.
* :func:`gloro_trades_loss` -- the TRADES-style GloRo loss of Fazlyab23's GloRo baseline
  (authors' ``Losses/GloRo.py``): ``CE(z, y) + lam KL([softmax(z), 1e-7] || softmax([z | z_bot]))``.
* :func:`sparsity_loss` -- ``mean max(0, dead_gap) + lam_theta mean max(0, sat_gap)`` (Huang21 Eq. 12
  / 26; for ReLU-theta the gaps are ``UB`` and ``theta - LB``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

SQRT2 = math.sqrt(2.0)


def _others(logits: Tensor, y: Tensor) -> Tensor:
    """Boolean mask (B, K), True where i != y."""
    mask = torch.ones_like(logits, dtype=torch.bool)
    mask[torch.arange(logits.shape[0], device=logits.device), y] = False
    return mask


def lmt_worst_logits(logits: Tensor, y: Tensor, eps: float | Tensor, lipschitz: float | Tensor) -> Tensor:
    """``z*_i = z_i + sqrt(2) eps L`` for i != y, ``z*_y = z_y`` (LMT; Huang21 §3.3).

    ``lipschitz`` is a scalar (global bound) or one value per sample (local bound, shape (B,)).
    """
    shift = SQRT2 * torch.as_tensor(eps, dtype=logits.dtype, device=logits.device) * torch.as_tensor(
        lipschitz, dtype=logits.dtype, device=logits.device
    )
    if shift.dim() == 1:
        shift = shift[:, None]
    return logits + shift * _others(logits, y).to(logits.dtype)


def bcp_worst_logits(logits: Tensor, y: Tensor, margin_lower: Tensor) -> Tensor:
    """Huang21 Eq. 24: ``z*_i = z_y - m_i`` for i != y and ``z*_y = z_y``, where ``m_i`` (B, K) is a
    lower bound of ``z_y - z_i`` over the perturbation set."""
    true = logits.gather(1, y[:, None])
    worst = true - margin_lower
    return torch.where(_others(logits, y), worst, logits)


def gloro_logits(logits: Tensor, y: Tensor, worst: Tensor) -> Tensor:
    """GloRo (Huang21 App. B): ``[z | max_{m != y} z*_m]``, K + 1 logits; the extra class wins exactly
    when some other class can overtake y within the perturbation set."""
    extra = worst.masked_fill(~_others(worst, y), float("-inf")).amax(dim=1, keepdim=True)
    return torch.cat([logits, extra], dim=1)


def robust_mixture_loss(logits: Tensor, worst_logits: Tensor, y: Tensor, lam: float) -> Tensor:
    """Huang21 Eq. 25: ``(1 - lam) CE(z, y) + lam CE(z*, y)``; ``worst_logits`` may have an extra
    (GloRo) column."""
    lam = float(lam)
    loss = logits.new_zeros(())
    if lam < 1:
        loss = loss + (1 - lam) * F.cross_entropy(logits, y)
    if lam > 0:
        loss = loss + lam * F.cross_entropy(worst_logits, y)
    return loss


def pairwise_from(kind: str, pairwise: Tensor | None = None, per_class: Tensor | None = None,
                  lipschitz: Tensor | float | None = None) -> Tensor:
    """``L_ij`` (K, K) from the constants of the authors' three modes (their
    ``createPairwiseLipschitzFromLipschitz``): "pairwise" ``L_ij`` itself, "per_class"
    ``L_i + L_j`` (Fazlyab23 "L_ij <= L_i + L_j"), "global" ``sqrt(2) L``. The diagonal is unused."""
    if kind == "pairwise":
        return pairwise
    if kind == "per_class":
        return per_class[:, None] + per_class[None, :]
    if kind == "global":
        k = per_class.shape[0] if per_class is not None else pairwise.shape[0]
        lip = torch.as_tensor(lipschitz)
        return SQRT2 * lip * torch.ones(k, k, dtype=lip.dtype, device=lip.device)
    raise ValueError(f"unknown Lipschitz mode {kind!r}; choose pairwise, per_class or global")


def pairwise_worst_logits(logits: Tensor, y: Tensor, eps: float | Tensor, pairwise: Tensor,
                          correct_only: bool = False) -> Tensor:
    """``z*_i = z_i + eps L_yi`` for i != y, ``z*_y = z_y`` (upper bounds of ``z_i - z_y`` shifted
    back to ``z_y``; Fazlyab23 Eq. 4-5). ``correct_only``: no shift for samples whose prediction
    ``argmax z`` is not y (the authors' LMT baseline zeroes their perturbation)."""
    shift = torch.as_tensor(eps, dtype=logits.dtype, device=logits.device) * pairwise.to(logits.dtype)[y]
    shift = shift * _others(logits, y).to(logits.dtype)
    if correct_only:
        shift = shift * (logits.argmax(1) == y).to(logits.dtype)[:, None]
    return logits + shift


def gloro_trades_loss(logits: Tensor, y: Tensor, worst: Tensor, lam: float, floor: float = 1e-7) -> Tensor:
    """TRADES-style GloRo (Fazlyab23's GloRo baseline, the authors' ``GloRoLoss``):

        CE(z, y) + lam * (1/B) sum_b KL(p_b || q_b),
        p = [softmax(z), floor] (K + 1 entries, not renormalised), q = softmax([z | max_{i != y} z*_i]),

    with ``KL(p || q) = sum_j p_j (log p_j - log q_j)`` (``nn.KLDivLoss(reduction="batchmean")`` on
    ``log q`` with target p, the gradient flowing into both). ``worst`` (B, K) are the worst-case
    logits (e.g. :func:`pairwise_worst_logits`); every sample is regularised (the authors' GloRo
    configuration sets ``regularizeOnlyCorrectPredictions: False``)."""
    ce = F.cross_entropy(logits, y)
    if not lam:
        return ce
    log_q = F.log_softmax(gloro_logits(logits, y, worst), dim=1)
    p = torch.cat([F.softmax(logits, dim=1), logits.new_full((logits.shape[0], 1), floor)], dim=1)
    kl = (torch.xlogy(p, p) - p * log_q).sum() / max(logits.shape[0], 1)
    return ce + float(lam) * kl


def sparsity_loss(gaps: Iterable[tuple[Tensor, Tensor | None]], lam_theta: float = 1.0) -> Tensor:
    """Huang21 Eq. 12 / 26: ``sum over layers of mean max(0, dead_gap) + lam_theta mean max(0, sat_gap)``.

    ``gaps`` holds one ``(dead_gap, sat_gap)`` pair per activation layer (``Activation.sparsity_gaps``;
    ``sat_gap`` None for activations without an upper threshold). Means run over samples and
    neurons of a layer (lipcert's normalisation; the paper does not state one).
    """
    total: Tensor | None = None
    for dead, sat in gaps:
        term = F.relu(dead).mean()
        if sat is not None and lam_theta:
            term = term + lam_theta * F.relu(sat).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("sparsity_loss needs at least one layer")
    return total


def certified_radius(logits: Tensor, y: Tensor, lipschitz: float | Tensor) -> Tensor:
    """``max(0, z_y - max_{j != y} z_j) / (sqrt(2) L)`` (plain arithmetic; for metrics, not certificates)."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(~_others(logits, y), float("-inf")).amax(1)
    return (true - other).clamp_min(0) / (SQRT2 * torch.as_tensor(lipschitz, dtype=logits.dtype, device=logits.device))


__all__ = [
    "bcp_worst_logits",
    "certified_radius",
    "gloro_logits",
    "gloro_trades_loss",
    "lmt_worst_logits",
    "pairwise_from",
    "pairwise_worst_logits",
    "robust_mixture_loss",
    "sparsity_loss",
]
