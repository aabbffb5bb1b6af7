"""Certificate for hybrid "l-inf-dist Net + MLP" models (Zhang21 code, EMAReport Table 1).

The backbone is an l-inf Lipschitz chain with constant L (= 1/std at p = inf), so for every
``||x' - x||_inf <= eps`` the features satisfy ``|f(x') - f(x)| <= eps L`` coordinate-wise: they
lie in the box ``f(x) +- rho``. The head (``Linear -> tanh -> Linear``; Linear, tanh, ReLU and
Identity layers are supported) is bounded by interval arithmetic over that box; the last layer is
tightened by bounding each logit difference directly with the row differences,

    z_y - z_j = (W_y - W_j) . h + (b_y - b_j) >= sum_k min((W_y - W_j)_k lo_k, (W_y - W_j)_k hi_k) + b_y - b_j,

and the sample is certified iff every such lower bound is > 0 (as the authors'
v1 certification). Radii come from bisection on eps (the bound is monotone in eps): first eps = 0
and ``CAP`` = 1 are checked, then the bracket [0, 1] is halved until it is narrower than ``tol``
(default 1e-5 raw pixel units, 17 halvings); the radius reported is the lower end of the bracket,
which was verified.

Floating point (everything in float64): the features carry the backbone's rigorous rounding
bound (:func:`lipcert.certify.linf_chain.rounding_bound`, which also covers float32 inference
anywhere within ``CAP`` of x); the head's bounds (:mod:`lipcert.bounds.hybrid_head`) widen each
linear layer's box by ``gamma_(n+4)(u) (|W| a + |b|)`` (the standard bound on a length-n dot
product, a = the box's magnitudes) for u = 2^-53 (this computation) and u = 2^-24 (float32
inference); tanh by 16 ulp of its value in both precisions (libm/SLEEF/CUDA document <= 2-4 ulp);
the final row-difference bounds subtract twice their float64 rounding bound and the float32
rounding of the two logits compared. A certified sample is
therefore classified correctly by exact arithmetic and by IEEE float32 inference (not TF32/bf16)
on every input of the ball.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import numerics
from ..bounds.hybrid_head import HeadError, head_box_bounds, head_bounds, head_ops, lipschitz_box
from .checks import check_logits, check_unit_box, in_unit_box
from .dispatch import register_certifier
from .driver import BatchFn, Certifier
from .interval import GRID_UP, input_box, propagate_box
from .linf_chain import U64, chain_layers, chain_lipschitz, forward_with_absmax, rounding_bound
from .result import Certificate, CertificationError

#: Largest radius searched (raw pixel units): beyond 1 the ball covers all of [0, 1]^d.
CAP = 1.0
@dataclass
class _Features:
    feats: Tensor  # (B, F) float64
    err: Tensor  # (B,) rounding bound of the features (float64 here + float32 inference within CAP)
    lipschitz: float
    pred: Tensor


def check_hybrid(model: nn.Module, x: Tensor | None = None, **_options) -> None:
    """Refuse models that are not hybrids (a backbone and a head)."""
    if not hasattr(model, "backbone") or not hasattr(model, "head"):
        raise CertificationError(f"{type(model).__name__} is not a hybrid model (needs .backbone and .head)")


class HybridBounds:
    """Per-sample worst-case logit-difference bounds of a hybrid model as a function of eps."""

    def __init__(self, model: nn.Module, float64_copy: bool = True) -> None:
        """``float64_copy=False``: ``model`` is already a float64 copy in eval mode (the driver's)."""
        check_hybrid(model)
        self.model64 = numerics.float64_copy(model) if float64_copy else model
        self.layers = chain_layers(self.model64.backbone)
        try:
            self.ops = head_ops(self.model64.head)
        except HeadError as err:
            raise CertificationError(str(err)) from None
        self.lipschitz = chain_lipschitz(self.layers)

    @torch.no_grad()
    def prepare(self, x: Tensor, y: Tensor | None = None) -> _Features:
        feats, absmax = forward_with_absmax(self.layers, x.to(torch.float64))
        feats = feats.flatten(1)
        err = rounding_bound(self.layers, absmax, torch.full((x.shape[0],), CAP, dtype=torch.float64, device=x.device))
        logits = self.model64.head(feats)
        if y is not None:
            check_logits(logits, y)
        return _Features(feats, err, self.lipschitz, logits.argmax(1))

    @torch.no_grad()
    def lower_bounds(self, fx: _Features, y: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(B, K) lower bounds of z_y - z_j for radius eps (B,), and (B,) logit magnitude bounds."""
        rho = (eps * fx.lipschitz + fx.err) * (1 + 4 * U64)
        return head_bounds(self.ops, fx.feats, rho, y, sound=True)

    @torch.no_grad()
    def interval_lower_bounds(self, x: Tensor, fx: _Features, y: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """As :meth:`lower_bounds`, over the intersection of the Lipschitz box with the box that
        interval propagation through the backbone gives for the input box clipped to [0, 1]
        (:mod:`lipcert.certify.interval`; the authors certify hybrids this way). Both boxes contain
        every feature vector, exact and float32-evaluated, of the valid inputs in the ball, so
        their intersection does too; it is never looser than either."""
        ilo, ihi = propagate_box(self.layers, *input_box(x.to(torch.float64), eps))
        rho = (eps * fx.lipschitz + fx.err) * (1 + 4 * U64)
        llo, lhi = lipschitz_box(fx.feats, rho, sound=True)
        lo, hi = torch.maximum(ilo.flatten(1), llo), torch.minimum(ihi.flatten(1), lhi)
        # NaN (float32 overflow in the backbone) must never certify: keep it
        nan = torch.isnan(ilo.flatten(1)) | torch.isnan(ihi.flatten(1))
        lo, hi = torch.where(nan, math.nan, lo), torch.where(nan, math.nan, hi)
        return head_box_bounds(self.ops, lo, hi, y, sound=True)


def bisect_radius(check, n: int, device, tol: float = 1e-5) -> Tensor:
    """Largest verified radius in [0, CAP] per sample for a monotone predicate ``check(idx, eps) -> bool``.

    eps = 0 and eps = CAP are tested first; then ceil(log2(CAP / tol)) halvings of [0, CAP].
    """
    radius = torch.zeros(n, dtype=torch.float64, device=device)
    everyone = torch.arange(n, device=device)
    ok0 = check(everyone, torch.zeros(n, dtype=torch.float64, device=device))
    idx = everyone[ok0]
    if idx.numel():
        at_cap = check(idx, torch.full((idx.numel(),), CAP, dtype=torch.float64, device=device))
        radius[idx[at_cap]] = CAP
        idx = idx[~at_cap]
    lo = torch.zeros(n, dtype=torch.float64, device=device)
    hi = torch.full((n,), CAP, dtype=torch.float64, device=device)
    for _ in range(max(1, math.ceil(math.log2(CAP / tol)))):
        if idx.numel() == 0:
            break
        mid = (lo[idx] + hi[idx]) / 2
        good = check(idx, mid)
        lo[idx[good]] = mid[good]
        hi[idx[~good]] = mid[~good]
    active = torch.zeros(n, dtype=torch.bool, device=device)
    active[idx] = True
    radius[active] = lo[active]
    return radius


def _mode_radius(bounds: HybridBounds, fx: _Features, x: Tensor, y: Tensor, mode: str, eps: Sequence[float] | None,
                 tol: float) -> Tensor:
    """Per-sample radii of one batch by one mode ("lipschitz": the Lipschitz box; "interval":
    backbone intervals of the clipped input box, requested ``eps`` also tested directly); 0 where
    the prediction is wrong."""
    def check(idx: Tensor, e: Tensor) -> Tensor:
        part = _Features(fx.feats[idx], fx.err[idx], fx.lipschitz, fx.pred[idx])
        if mode == "lipschitz":
            lower, _ = bounds.lower_bounds(part, y[idx], e)
        else:
            lower, _ = bounds.interval_lower_bounds(x[idx], part, y[idx], e)
        return (lower > 0).all(1)

    r = bisect_radius(check, len(y), x.device, tol)
    for e in sorted(float(v) for v in (eps or [])) if mode == "interval" else []:
        # requested radii are tested directly, not to within tol
        test = e * (1 + GRID_UP) if e > 0 else GRID_UP
        idx = ((r < test) & (fx.pred == y)).nonzero()[:, 0]
        if idx.numel():
            good = check(idx, torch.full((idx.numel(),), test, dtype=torch.float64, device=x.device))
            r[idx[good]] = test
    return torch.where(fx.pred == y, r, torch.zeros_like(r)).cpu()


def _lipschitz_cert(fx: _Features, y: Tensor, radii: dict[str, Tensor]) -> Certificate:
    return Certificate(radius=radii["lipschitz"], prediction=fx.pred.cpu(), label=y.cpu(), norm="linf",
                       method="hybrid_interval", bound="upper", extra={"feature_rounding": fx.err.cpu()})


def _interval_cert(fx: _Features, y: Tensor, radii: dict[str, Tensor]) -> Certificate:
    return Certificate(radius=radii["interval"], prediction=fx.pred.cpu(), label=y.cpu(), norm="linf",
                       method="hybrid_backbone_interval", bound="upper")


def _best_cert(fx: _Features, y: Tensor, radii: dict[str, Tensor]) -> Certificate:
    lip, iv = radii["lipschitz"], radii["interval"]
    return Certificate(radius=torch.maximum(lip, iv), prediction=fx.pred.cpu(), label=y.cpu(), norm="linf",
                       method="hybrid_interval+backbone_interval", bound="upper",
                       extra={"feature_rounding": fx.err.cpu(), "margin_radius": lip, "interval_radius": iv})


def _batches(model64: nn.Module, modes: tuple[str, ...], form, eps: Sequence[float] | None, tol: float) -> BatchFn:
    """Batches certified by the hybrid certificates in ``modes``, sharing one backbone pass per batch."""
    bounds = HybridBounds(model64, float64_copy=False)

    def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
        fx = bounds.prepare(xb, yb)
        return form(fx, yb, {mode: _mode_radius(bounds, fx, xb, yb, mode, eps, tol) for mode in modes})

    return batch


def _lipschitz_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None,
                     tol: float = 1e-5) -> BatchFn:
    return _batches(model64, ("lipschitz",), _lipschitz_cert, None, tol)


def _interval_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None,
                    tol: float = 1e-5) -> BatchFn:
    return _batches(model64, ("interval",), _interval_cert, eps, tol)


def _best_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None,
                tol: float = 1e-5) -> BatchFn:
    if not in_unit_box(x):  # the backbone intervals clip the ball to [0, 1]: the Lipschitz box alone
        return _batches(model64, ("lipschitz",), _lipschitz_cert, None, tol)
    return _batches(model64, ("lipschitz", "interval"), _best_cert, eps, tol)


def _check_interval(model: nn.Module, x: Tensor, **_options) -> None:
    check_unit_box(x)
    check_hybrid(model)


#: The Lipschitz-box certificate (``eps`` accepted and ignored: the radius search is cheap).
HYBRID = Certifier("hybrid lipschitz", "linf", _lipschitz_setup, check=check_hybrid)
#: Backbone intervals of the clipped input box, intersected with the Lipschitz box.
HYBRID_INTERVAL = Certifier("hybrid interval", "linf", _interval_setup, check=_check_interval)
#: Per sample the larger of the two, in one pass (the default of hybrids).
HYBRID_BEST = Certifier("hybrid best", "linf", _best_setup, check=check_hybrid)


def hybrid(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5, batch_size: int = 500) -> Certificate:
    """Certified l-inf radii of a hybrid "l-inf-dist Net + MLP" model (see module docstring).

    ``eps`` is accepted for API symmetry and ignored: the radius search is cheap (the backbone
    runs once; only the head is re-bounded per bisection step).
    """
    return HYBRID(model, x, y, batch_size=batch_size, eps=eps, tol=tol)


def hybrid_interval(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5,
                    batch_size: int = 500) -> Certificate:
    """Certified l-inf radii of a hybrid model by interval propagation through the backbone with the
    input box clipped to [0, 1], intersected with the Lipschitz box, then through the head
    (:meth:`HybridBounds.interval_lower_bounds`); bisection as :func:`hybrid`, and every requested
    ``eps_k`` is also tested directly (radius at least ``eps_k (1 + 2^-30)`` where verified). Certifies perturbed
    inputs that stay valid pixels (as PGD's do); inputs outside [0, 1] are refused."""
    return HYBRID_INTERVAL(model, x, y, batch_size=batch_size, eps=eps, tol=tol)


def hybrid_best(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5,
                batch_size: int = 500) -> Certificate:
    """Per sample the larger of :func:`hybrid` (Lipschitz box) and :func:`hybrid_interval` (backbone
    intervals), computed in one pass; ``extra`` holds ``margin_radius`` (the Lipschitz-box radius,
    the plain certificate) and ``interval_radius``. Inputs outside [0, 1] get the Lipschitz-box
    certificate only."""
    return HYBRID_BEST(model, x, y, batch_size=batch_size, eps=eps, tol=tol)


register_certifier("linf_hybrid", HYBRID_BEST)
register_certifier("linf_hybrid", HYBRID, method="lipschitz", fast=True)
register_certifier("linf_hybrid", HYBRID_INTERVAL, method="interval")
register_certifier("linf_hybrid", HYBRID_BEST, method="best")
