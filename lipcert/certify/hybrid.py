"""Certificate for hybrid "l-inf-dist Net + MLP" models (001 code, 002 Table 1).

The backbone is an l-inf Lipschitz chain with constant L (= 1/std at p = inf), so for every
``||x' - x||_inf <= eps`` the features satisfy ``|f(x') - f(x)| <= eps L`` coordinate-wise: they
lie in the box ``f(x) +- rho``. The head (``Linear -> tanh -> Linear``; Linear, tanh, ReLU and
Identity layers are supported) is bounded by interval arithmetic over that box; the last layer is
tightened by bounding each logit difference directly with the row differences,

    z_y - z_j = (W_y - W_j) . h + (b_y - b_j) >= sum_k min((W_y - W_j)_k lo_k, (W_y - W_j)_k hi_k) + b_y - b_j,

and the sample is certified iff every such lower bound is > 0 (reference-numbers.md: the authors'
v1 certification). Radii come from bisection on eps (the bound is monotone in eps): first eps = 0
and ``CAP`` = 1 are checked, then the bracket [0, 1] is halved until it is narrower than ``tol``
(default 1e-5 raw pixel units, 17 halvings); the radius reported is the lower end of the bracket,
which was verified.

Floating point (everything in float64): the features carry the backbone's rigorous rounding
bound (:func:`lipcert.certify.margin.rounding_bound`, which also covers float32 inference
anywhere within ``CAP`` of x); each linear layer's box is widened by ``gamma_(n+4)(u) (|W| a + |b|)``
(the standard bound on a length-n dot product, a = the box's magnitudes) for u = 2^-53 (this
computation) and u = 2^-24 (float32 inference); tanh by 16 ulp of its value in both precisions
(libm/SLEEF/CUDA document <= 2-4 ulp); the final row-difference bounds subtract twice their float64
rounding bound and the float32 rounding of the two logits compared. A certified sample is
therefore classified correctly by exact arithmetic and by IEEE float32 inference (not TF32/bf16)
on every input of the ball.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn import ScaledLinear
from .dispatch import register_certifier
from .interval import GRID_UP, check_unit_box, in_unit_box, input_box, propagate_box
from .margin import F32_SAFE, U32, U64, chain_layers, check_inputs, check_logits, forward_with_absmax, layer_lipschitz, rounding_bound
from .result import Certificate, CertificationError

#: Largest radius searched (raw pixel units): beyond 1 the ball covers all of [0, 1]^d.
CAP = 1.0
#: Relative error bound (in ulps) of one tanh evaluation.
TANH_ULPS = 16.0


def gamma(n: int, unit: float) -> float:
    """``n u / (1 - n u)``: relative error bound of an n-term dot product (Higham, Thm 3.1)."""
    return n * unit / (1.0 - n * unit)


@dataclass
class HeadOp:
    kind: str  # "linear" | "tanh" | "relu" | "identity"
    weight: Tensor | None = None  # (out, in), effective weight
    bias: Tensor | None = None  # (out,)


def head_ops(head: nn.Module, dtype: torch.dtype | None = torch.float64) -> list[HeadOp]:
    """The head as a list of operations; weights detached in ``dtype`` (``None``: live, differentiable)."""
    modules = list(head.children()) if isinstance(head, nn.Sequential) else [head]
    ops: list[HeadOp] = []
    for m in modules:
        if isinstance(m, ScaledLinear):
            w = m.weight * m.scale if dtype is None else m.effective_weight(dtype)
            b = None if m.bias is None else (m.bias if dtype is None else m.bias.detach().to(dtype))
            ops.append(HeadOp("linear", w, b))
        elif isinstance(m, nn.Linear):
            w = m.weight if dtype is None else m.weight.detach().to(dtype)
            b = None if m.bias is None else (m.bias if dtype is None else m.bias.detach().to(dtype))
            ops.append(HeadOp("linear", w, b))
        elif isinstance(m, nn.Tanh):
            ops.append(HeadOp("tanh"))
        elif isinstance(m, nn.ReLU):
            ops.append(HeadOp("relu"))
        elif isinstance(m, nn.Identity):
            ops.append(HeadOp("identity"))
        else:
            raise CertificationError(
                f"hybrid head layer {type(m).__name__} is not supported (Linear, ScaledLinear, Tanh, ReLU, Identity)"
            )
    if not ops or ops[-1].kind != "linear":
        raise CertificationError("the hybrid head must end with a Linear layer")
    return ops


def _linear_box(op: HeadOp, lo: Tensor, hi: Tensor, sound: bool) -> tuple[Tensor, Tensor]:
    w, b = op.weight, op.bias
    wp, wn = w.clamp_min(0), w.clamp_max(0)
    lower = lo @ wp.T + hi @ wn.T
    upper = hi @ wp.T + lo @ wn.T
    if b is not None:
        lower, upper = lower + b, upper + b
    if sound:
        a = torch.maximum(lo.abs(), hi.abs())
        mag = a @ w.abs().T + (0 if b is None else b.abs())
        n = w.shape[1]
        err = 2 * (gamma(n + 4, U64) + gamma(n + 4, U32)) * mag
        # partial sums of a float32 evaluation are <= mag * sqrt(n) (ScaledLinear scales after the
        # product); where they could overflow, NaN marks the box as unusable (never certified)
        err = torch.where(mag * math.sqrt(n) < F32_SAFE, err, math.nan)
        lower, upper = lower - err, upper + err
    return lower, upper


def lipschitz_box(f: Tensor, rho: Tensor, sound: bool = True) -> tuple[Tensor, Tensor]:
    """The feature box ``f +- rho`` (rho per sample), rounded outward when ``sound``."""
    r = rho.view(-1, 1)
    lo, hi = f - r, f + r
    if sound:
        s = 2 * U64 * (f.abs() + r)
        lo, hi = lo - s, hi + s
    return lo, hi


def head_bounds(ops: list[HeadOp], f: Tensor, rho: Tensor, y: Tensor, sound: bool = True) -> tuple[Tensor, Tensor]:
    """Lower bounds (B, K) of ``z_y - z_j`` over the feature box ``f +- rho`` (rho per sample), +inf at j = y,
    and a bound (B,) on the magnitude of every logit over the box.

    ``sound=True``: float64 with the rounding slack of the module docstring. ``sound=False``: the
    same formula without slack, differentiable (training objectives use it in float32).
    """
    return head_box_bounds(ops, *lipschitz_box(f, rho, sound), y, sound)


def head_box_bounds(ops: list[HeadOp], lo: Tensor, hi: Tensor, y: Tensor, sound: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`head_bounds` over any feature box ``[lo, hi]`` (B, F) that contains every feature
    vector (exact and float32-evaluated) of the inputs certified."""
    for op in ops[:-1]:
        if op.kind == "linear":
            lo, hi = _linear_box(op, lo, hi, sound)
        elif op.kind == "tanh":
            tl, th = torch.tanh(lo), torch.tanh(hi)
            if sound:
                t = TANH_ULPS * (U64 + U32) * torch.maximum(tl.abs(), th.abs()) + 1e-300
                tl, th = tl - t, th + t
            lo, hi = tl, th
        elif op.kind == "relu":
            lo, hi = torch.relu(lo), torch.relu(hi)
    last = ops[-1]
    w, b = last.weight, last.bias
    d = w[y][:, None, :] - w[None, :, :]  # (B, K, n) row differences W_y - W_j
    lower = torch.einsum("bkn,bn->bk", d.clamp_min(0), lo) + torch.einsum("bkn,bn->bk", d.clamp_max(0), hi)
    if b is not None:
        lower = lower + (b[y][:, None] - b[None, :])
    a = torch.maximum(lo.abs(), hi.abs())
    logit_mag = a @ w.abs().T + (0 if b is None else b.abs())  # (B, K) bound on |z_k| over the box
    if sound:
        n = w.shape[1]
        dmag = torch.einsum("bkn,bn->bk", d.abs(), a) + (0 if b is None else (b[y][:, None].abs() + b.abs()[None, :]))
        e32 = gamma(n + 4, U32) * logit_mag  # float32 inference error of each logit
        overflow = ~(logit_mag * math.sqrt(n) < F32_SAFE).all(1, keepdim=True)  # as in _linear_box
        e32 = torch.where(overflow, math.nan, e32)
        lower = lower - 2 * gamma(n + 4, U64) * dmag - (e32.gather(1, y[:, None]) + e32)
        logit_mag = logit_mag * (1 + gamma(n + 4, U64)) + e32
    lower = lower.scatter(1, y[:, None], math.inf)
    return lower, logit_mag.amax(1)


@dataclass
class _Features:
    feats: Tensor  # (B, F) float64
    err: Tensor  # (B,) rounding bound of the features (float64 here + float32 inference within CAP)
    lipschitz: float
    pred: Tensor


class HybridBounds:
    """Per-sample worst-case logit-difference bounds of a hybrid model as a function of eps."""

    def __init__(self, model: nn.Module) -> None:
        if not hasattr(model, "backbone") or not hasattr(model, "head"):
            raise CertificationError(f"{type(model).__name__} is not a hybrid model (needs .backbone and .head)")
        self.model64 = copy.deepcopy(model).to(torch.float64).eval()
        self.layers = chain_layers(self.model64.backbone)
        self.ops = head_ops(self.model64.head)
        self.lipschitz = math.prod(layer_lipschitz(layer) for layer in self.layers)

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


def _hybrid_radii(model: nn.Module, x: Tensor, y: Tensor, modes: tuple[str, ...], eps: Sequence[float] | None,
                  tol: float, batch_size: int) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Per-sample radii of the hybrid certificates in ``modes`` ("lipschitz": the Lipschitz box;
    "interval": backbone intervals of the clipped input box, requested ``eps`` also tested directly),
    sharing one float64 copy of the model and one backbone pass per batch. Returns the radii by
    mode, the predictions and the features' rounding bounds."""
    check_inputs(model, x, y)
    if "interval" in modes:
        check_unit_box(x)
    bounds = HybridBounds(model)
    device = next(model.parameters()).device
    radii: dict[str, list[Tensor]] = {m: [] for m in modes}
    preds, errs = [], []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(device, torch.float64)
        yb = y[s : s + batch_size].to(device).long()
        try:
            fx = bounds.prepare(xb, yb)
        except (RuntimeError, IndexError) as err:
            raise CertificationError(f"model could not be evaluated on inputs of shape {tuple(xb.shape)}: {err}") from None
        for mode in modes:
            def check(idx: Tensor, e: Tensor, fx=fx, xb=xb, yb=yb, mode=mode) -> Tensor:
                part = _Features(fx.feats[idx], fx.err[idx], fx.lipschitz, fx.pred[idx])
                if mode == "lipschitz":
                    lower, _ = bounds.lower_bounds(part, yb[idx], e)
                else:
                    lower, _ = bounds.interval_lower_bounds(xb[idx], part, yb[idx], e)
                return (lower > 0).all(1)

            r = bisect_radius(check, len(yb), device, tol)
            for e in sorted(float(v) for v in (eps or [])) if mode == "interval" else []:
                # requested radii are tested directly, not to within tol
                test = e * (1 + GRID_UP) if e > 0 else GRID_UP
                idx = ((r < test) & (fx.pred == yb)).nonzero()[:, 0]
                if idx.numel():
                    good = check(idx, torch.full((idx.numel(),), test, dtype=torch.float64, device=device))
                    r[idx[good]] = test
            radii[mode].append(torch.where(fx.pred == yb, r, torch.zeros_like(r)).cpu())
        preds.append(fx.pred.cpu())
        errs.append(fx.err.cpu())
    if not preds:
        raise CertificationError("no samples to certify")
    return {m: torch.cat(r) for m, r in radii.items()}, torch.cat(preds), torch.cat(errs)


def hybrid(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5, batch_size: int = 500) -> Certificate:
    """Certified l-inf radii of a hybrid "l-inf-dist Net + MLP" model (see module docstring).

    ``eps`` is accepted for API symmetry and ignored: the radius search is cheap (the backbone
    runs once; only the head is re-bounded per bisection step).
    """
    radii, preds, errs = _hybrid_radii(model, x, y, ("lipschitz",), None, tol, batch_size)
    return Certificate(
        radius=radii["lipschitz"], prediction=preds, label=y.cpu().long(), norm="linf",
        method="hybrid_interval", bound="upper", extra={"feature_rounding": errs},
    )


def hybrid_interval(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5,
                    batch_size: int = 500) -> Certificate:
    """Certified l-inf radii of a hybrid model by interval propagation through the backbone with the
    input box clipped to [0, 1], intersected with the Lipschitz box, then through the head
    (:meth:`HybridBounds.interval_lower_bounds`); bisection as :func:`hybrid`, and every requested
    ``eps_k`` is also tested directly (radius at least ``eps_k (1 + 2^-30)`` where verified). Certifies perturbed
    inputs that stay valid pixels (as PGD's do); inputs outside [0, 1] are refused."""
    radii, preds, _ = _hybrid_radii(model, x, y, ("interval",), eps, tol, batch_size)
    return Certificate(
        radius=radii["interval"], prediction=preds, label=y.cpu().long(), norm="linf",
        method="hybrid_backbone_interval", bound="upper",
    )


def hybrid_best(model: nn.Module, x: Tensor, y: Tensor, eps: Sequence[float] | None = None, tol: float = 1e-5,
                batch_size: int = 500) -> Certificate:
    """Per sample the larger of :func:`hybrid` (Lipschitz box) and :func:`hybrid_interval` (backbone
    intervals), computed in one pass; ``extra`` holds ``margin_radius`` (the Lipschitz-box radius,
    the plain certificate) and ``interval_radius``. Inputs outside [0, 1] get the Lipschitz-box
    certificate only."""
    if not in_unit_box(x):
        return hybrid(model, x, y, tol=tol, batch_size=batch_size)
    radii, preds, errs = _hybrid_radii(model, x, y, ("lipschitz", "interval"), eps, tol, batch_size)
    lip, iv = radii["lipschitz"], radii["interval"]
    return Certificate(
        radius=torch.maximum(lip, iv), prediction=preds, label=y.cpu().long(), norm="linf",
        method="hybrid_interval+backbone_interval", bound="upper",
        extra={"feature_rounding": errs, "margin_radius": lip, "interval_radius": iv},
    )


register_certifier("linf_hybrid", hybrid_best)
register_certifier("linf_hybrid", hybrid, method="lipschitz", fast=True)
register_certifier("linf_hybrid", hybrid_interval, method="interval")
register_certifier("linf_hybrid", hybrid_best, method="best")
