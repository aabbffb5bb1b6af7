"""Pairwise Lipschitz bounds and their proxies, as compared in Fazlyab23 Table 2.

For a K-class network, three ways to bound the Lipschitz constant of a logit difference
``z_i - z_j`` (Fazlyab23 §4.1.1):

* ``L_ij`` -- directly, LipLT (or the naive product) with ``c = e_i - e_j`` in the last layer;
* ``L_i + L_j`` -- per-class bounds (GloRo, Fazlyab23 ref. [5]); ``||c^T A|| <= ||e_i^T A|| + ||e_j^T A||``
  term by term in Eq. 19, so ``L_ij <= L_i + L_j``;
* ``sqrt(2) L`` -- the whole network's bound times ``||e_i - e_j|| = sqrt(2)`` (LMT / Huang21), so
  ``L_ij <= sqrt(2) L``.

:func:`pairwise_summary` averages each over all unique pairs i < j, as Fazlyab23 Table 2 does;
:func:`table2` computes the naive and LipLT rows for one model. This module also registers the
``lipcert bounds`` entries ``naive``, ``liplt``, ``pairwise_mean``, ``pairwise_max`` and
``pairwise_naive_mean`` (the LipLT computation is shared through the context cache; its time is
counted in the first entry that needs it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .liplt import LipLTResult, liplt, naive_bounds
from .ltnet import LTError, LTNet
from .registry import BoundContext, register_bound
from .span_norms import Budget


@dataclass
class PairwiseSummary:
    """Means over unique pairs i < j (Fazlyab23 Table 2) and the largest L_ij."""

    method: str
    kind: str
    l_ij: float
    l_i_plus_l_j: float
    sqrt2_l: float
    l_ij_max: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def pairwise_summary(res: LipLTResult) -> PairwiseSummary:
    """Table 2 statistics of one :class:`~lipcert.bounds.liplt.LipLTResult`."""
    k = res.pairwise.shape[0]
    iu = torch.triu_indices(k, k, 1)
    pairs = res.pairwise[iu[0], iu[1]]
    sums = res.per_class[iu[0]] + res.per_class[iu[1]]
    return PairwiseSummary(
        method=res.method,
        kind=res.kind,
        l_ij=float(pairs.mean()),
        l_i_plus_l_j=float(sums.mean()),
        sqrt2_l=math.sqrt(2.0) * res.lipschitz,
        l_ij_max=float(pairs.max()),
        seconds=res.seconds,
    )


def table2(model: nn.Module, budget: Budget | None = None, estimate: bool = False) -> dict[str, PairwiseSummary]:
    """Naive and LipLT rows of Fazlyab23 Table 2 for ``model`` (provable upper bounds; with
    ``estimate`` also the power-iteration LipLT row the paper reports)."""
    out = {"naive": pairwise_summary(naive_bounds(model)), "liplt": pairwise_summary(liplt(model, "upper", budget=budget))}
    if estimate:
        out["liplt_estimate"] = pairwise_summary(liplt(model, "estimate"))
    return out


# ----------------------------------------------------------------------------- lipcert bounds
def _applies(model: nn.Module) -> bool:
    if getattr(model, "certificate", None) != "l2_lipschitz":
        return False
    try:
        LTNet.from_model(model)
    except (LTError, ValueError):
        return False
    return True


def _cached(ctx: BoundContext, key: str) -> LipLTResult:
    if key not in ctx.cache:
        if key == "naive_pairwise":
            ctx.cache[key] = naive_bounds(ctx.model)
        else:
            ctx.cache[key] = liplt(ctx.model, "upper", budget=ctx.options.get("liplt_budget"))
    return ctx.cache[key]


def _pairs(res: LipLTResult) -> torch.Tensor:
    return res.pairs()


register_bound("naive", lambda ctx: _cached(ctx, "naive_pairwise").lipschitz, "upper",
               "product of rigorous per-layer bounds (Fazlyab23 Eq. 13, Table 2 'Naive')", _applies)
register_bound("liplt", lambda ctx: _cached(ctx, "liplt").lipschitz, "upper",
               "LipLT (Fazlyab23 Thm 3.3), composed norms bounded rigorously", _applies)
register_bound("pairwise_mean", lambda ctx: float(_pairs(_cached(ctx, "liplt")).mean()), "upper",
               "mean over class pairs of LipLT L_ij (Fazlyab23 Table 2; from the liplt computation)", _applies)
register_bound("pairwise_max", lambda ctx: float(_pairs(_cached(ctx, "liplt")).max()), "upper",
               "largest LipLT L_ij (from the liplt computation)", _applies)
register_bound("pairwise_naive_mean", lambda ctx: float(_pairs(_cached(ctx, "naive_pairwise")).mean()), "upper",
               "mean over class pairs of naive L_ij = ||w_i - w_j|| prod ||W_k|| (Fazlyab23 Table 2)", _applies)

__all__ = ["PairwiseSummary", "pairwise_summary", "table2"]
