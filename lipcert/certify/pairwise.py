"""l2 certificates from pairwise Lipschitz bounds (Fazlyab23 Eq. 4-5): radius = min_{i != y} (z_y - z_i) / L_yi.

If ``z_y - z_i`` is ``L_yi``-Lipschitz in l2 for every i != y, no input within
``min_i (z_y - z_i) / L_yi`` of x changes the prediction (Fazlyab23 Eq. 4-5). ``--bound`` choices:

* ``"naive"`` -- ``L_yi = ||w_y - w_i|| * prod_k (per-layer rigorous bound)`` (Fazlyab23 Table 2 "Naive"
  L_ij; the same numbers as ``"global"`` of :func:`lipschitz_l2` in its default pairs form, never
  worse than ``sqrt(2) L``). Label "upper".
* ``"liplt"`` -- ``L_yi`` from LipLT (Fazlyab23 Thm 3.3 with c = e_y - e_i), every composed operator's norm
  a provable upper bound (:func:`lipcert.bounds.liplt.liplt`, mode "upper"). Label "upper".
* ``"liplt-per-class"`` -- the per-class mode of the authors' code (``--perClassLipschitz``):
  ``L_yi <= L_y + L_i`` with ``L_i`` the LipLT bound of ``z_i`` alone (Thm 3.3 with c = e_i,
  provable). Since ``L_ij <= L_i + L_j`` term by term in Eq. 19, its radii are never above
  ``"liplt"``'s; it needs K rows instead of K(K-1)/2 pairs. Label "upper".
* ``"liplt-estimate"`` -- the same recursion with power-iteration norms (what Fazlyab23 certifies with):
  label **"estimate"**, not a proof.
* ``"best"`` (the ``l2_lipschitz`` certifier, :mod:`lipcert.certify.l2_certifier`) -- per sample
  the largest of the sound radii: LipLT and the Huang21 certificates (global, local-upper) of
  :func:`lipcert.certify.l2.lipschitz_l2`.

Floating point, as :mod:`lipcert.certify.margin` / :mod:`lipcert.certify.l2`: logits are computed in
float64 with a rigorous elementwise bound on their rounding error; for plain chains also on the
error of a float32 evaluation anywhere in the certified ball (``L2Bounds.float32_error``). Networks
with Prop. 3.1 residual layers are certified for their float64 evaluation (with T computed once and
used both for the logits and for the bound); their float32 inference recomputes T and is not
covered. Each lower margin ``z_y - z_i - e_y - e_i`` is divided by ``L_yi`` and rounded down.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from ..bounds.liplt import LipLTResult, as_ltnet, liplt, naive_bounds
from ..bounds.ltnet import LTError, LTNet
from ..bounds.network import forward_error as network_forward_error
from ..bounds.network import parse
from ..numerics import U64
from ..bounds.span_norms import Budget
from .driver import BatchFn, Certifier
from .l2 import check_l2_model
from .result import SOURCE_CODES, Certificate, CertificationError

PAIRWISE_CHOICES = ("naive", "liplt", "liplt-estimate", "liplt-per-class")


def pairwise_matrix(model: nn.Module | LTNet, bound: str, budget: Budget | None = None, iters: int = 100,
                    tol: float = 1e-5) -> LipLTResult:
    """The (K, K) pairwise bounds behind ``bound`` ("naive", "liplt", "liplt-estimate")."""
    if bound == "naive":
        return naive_bounds(model)
    if bound == "liplt":
        return liplt(model, "upper", budget=budget)
    if bound == "liplt-estimate":
        return liplt(model, "estimate", iters=iters, tol=tol)
    if bound == "liplt-per-class":
        return per_class_matrix(liplt(model, "upper", budget=budget))
    raise CertificationError(f"unknown pairwise bound {bound!r}; choose one of {', '.join(PAIRWISE_CHOICES)}")


def per_class_matrix(res: LipLTResult) -> LipLTResult:
    """``L_ij = L_i + L_j`` (rounded up; 0 on the diagonal) from the per-class bounds of ``res``:
    the authors' per-class mode (their ``createPairwiseLipschitzFromLipschitz``)."""
    cls = res.per_class.to(torch.float64)
    mat = (cls[:, None] + cls[None, :]) * (1 + 2 * U64)
    mat.fill_diagonal_(0.0)
    return LipLTResult(lipschitz=res.lipschitz, pairwise=mat, per_class=res.per_class, hidden=res.hidden, kind=res.kind,
                       method=f"{res.method}-per-class", span_kinds=res.span_kinds, seconds=res.seconds, details=res.details)


def pairwise_radius(logits: Tensor, y: Tensor, err: Tensor, lip: Tensor) -> tuple[Tensor, Tensor]:
    """Sound radii (B,) ``min_{i != y} low_i / L_yi`` (rounded down; 0 unless every low_i > 0) and
    the float64 margin; ``err`` (B, K) bounds the logits' errors, ``lip`` (K, K) upper bounds."""
    logits = logits.to(torch.float64)
    true = logits.gather(1, y[:, None])
    low = true - logits - err.gather(1, y[:, None]) - err
    low = low - 4 * U64 * (true.abs() + logits.abs())
    lyi = lip.to(device=logits.device, dtype=torch.float64)[y] * (1 + 4 * U64)
    own = F.one_hot(y, logits.shape[1]).bool()
    r = (low / lyi).masked_fill(own, math.inf)
    r = torch.where(low.masked_fill(own, math.inf) > 0, r, torch.zeros_like(r))
    radius = (r.amin(1) * (1 - 8 * U64)).clamp_min(0.0)
    radius = torch.where(torch.isfinite(radius), radius, torch.zeros_like(radius))
    margin = true[:, 0] - logits.masked_fill(own, -math.inf).amax(1)
    return radius, margin


def _is_chain(model: nn.Module) -> bool:
    from ..bounds.chain import LipschitzChain

    try:
        LipschitzChain.from_model(model)
    except ValueError:
        return False
    return True


@torch.no_grad()
def forward_with_error(net: LTNet, model64: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 logits of ``model64`` and an elementwise rigorous bound on their rounding error,
    for any model LTNet reads (residual layers use the T stored in ``net``):
    :func:`lipcert.bounds.network.forward_error` over the blocks ``net`` was read from."""
    t_of = {id(st.module): st.G.t for st in net.stages if st.G is not None}  # type: ignore[union-attr]
    parsed = net.network if net.network is not None else parse(model64, getattr(model64, "in_shape", None) or net.in_shape)
    return network_forward_error(parsed, x, t_of)


def pairwise_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, bound: str = "liplt",
                   budget: Budget | None = None, lip: LipLTResult | None = None) -> BatchFn:
    """Batches certified by pairwise bounds (see :func:`pairwise_l2`)."""
    if bound not in PAIRWISE_CHOICES:
        raise CertificationError(f"unknown pairwise bound {bound!r}; choose one of {', '.join(PAIRWISE_CHOICES)}")
    check_l2_model(model)
    in_shape = getattr(model, "in_shape", None)
    if in_shape is not None:
        model64.in_shape = in_shape
    try:
        net = as_ltnet(model64, dtype=None)
    except LTError as err:
        raise CertificationError(str(err)) from None
    res = lip or pairwise_matrix(net, bound, budget)
    lip_m = res.pairwise.to(torch.float64)
    an = None
    if _is_chain(model):
        from ..bounds.analysis import L2Bounds

        an = L2Bounds(model)

    def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
        if an is not None:
            fwd, err64 = an.forward(xb.to(torch.float64))
            logits, err = fwd.logits, err64[-1]
            # radius cap: no certified radius can exceed min_i margin_i / L_yi
            r0, _ = pairwise_radius(logits, yb, torch.zeros_like(err), lip_m)
            cap = torch.where(r0 > 0, r0, torch.zeros_like(r0)) * (1 + 1e-6) + 1e-12
            err = err + an.float32_error(fwd, err64, cap)
        else:
            logits, err = forward_with_error(net, model64, xb)
        radius, margin = pairwise_radius(logits, yb, err, lip_m)
        pred = logits.argmax(1)
        radius = torch.where(pred == yb, radius, torch.zeros_like(radius))
        src = torch.where(radius > 0, torch.full_like(yb, SOURCE_CODES[bound]), torch.zeros_like(yb))
        lyi = lip_m.to(logits.device)[yb]
        return Certificate(
            radius=radius.cpu(), prediction=pred.cpu(), label=yb.cpu(), norm="l2",
            method=f"l2_pairwise_{bound.replace('-', '_')}", bound=res.kind,
            extra={"margin": margin.cpu(), "lipschitz_pair_min": lyi.masked_fill(F.one_hot(yb, lyi.shape[1]).bool(), math.inf).amin(1).cpu(),
                   "bound_source": src.cpu(),
                   # the naive pairwise radius is lipcert's "global" certificate (pairs form)
                   "radius_global": (radius if bound == "naive" else torch.zeros_like(radius)).cpu()},
        )

    return batch


#: Fazlyab23's pairwise certificates (``bound``: naive, liplt, liplt-estimate).
PAIRWISE_L2 = Certifier("l2 pairwise", "l2", pairwise_setup, check=check_l2_model, bounds=PAIRWISE_CHOICES,
                        float64_inputs=False)


def pairwise_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 500,
    bound: str = "liplt",
    budget: Budget | None = None,
    lip: LipLTResult | None = None,
) -> Certificate:
    """Certified l2 radii from pairwise bounds (see module docstring); raw [0, 1] input units.

    ``lip`` reuses precomputed bounds (they must be those of ``model``'s current weights).
    """
    return PAIRWISE_L2(model, x, y, batch_size=batch_size, bound=bound, budget=budget, lip=lip)


__all__ = ["PAIRWISE_CHOICES", "PAIRWISE_L2", "forward_with_error", "pairwise_l2", "pairwise_matrix", "pairwise_radius",
           "per_class_matrix"]
