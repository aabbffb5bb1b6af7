"""The BCP certificate at fixed radii (Huang21 App. B, Eq. 21-24; the authors' evaluation protocol).

At a radius eps, the features ``h`` of every input ``x'`` with ``||x' - x|| <= eps`` and
``x'`` in the pixel range ``[0, 1]`` (the input is clipped, as images are) lie in

* the l2 ball of radius ``eps L`` around the clean features, L a sound upper bound of the local
  Lipschitz constant of the layers before the last on that input set (Huang21 Eq. 6 with exact
  reduced dense norms, conv layers at their global bound: ``local-upper``'s prefix, never above the
  global prefix bound), and
* the box from sound interval propagation of ``[x - eps, x + eps]`` clipped to ``[0, 1]``
  (intersected layer by layer with the ball bounds of the pre-activations, Huang21 Eq. 23).

A sample is certified at eps iff a rigorous lower bound of ``min (z_y - z_i)`` over that
intersection (:func:`lipcert.bounds.ball_sound.sound_margin_lower_bounds`: the best of the box,
ball and Lagrangian-dual bounds) exceeds the float32 inference error of ``z_y - z_i`` at every such
input, for every ``i != y``; or iff the Lipschitz-margin certificate (``local-upper``: global and
local radius, :mod:`lipcert.certify.l2`) already certifies it at eps. The BCP part is computed only
where that certificate does not (and where its PGD pre-filter found no adversarial example), so the
answer is never worse than ``local-upper`` at the same eps.

The answer is per eps, not a radius. The certificate's ``radius`` is the Lipschitz radius or, where
larger, the largest ``eps' = eps (1 + 1e-6) + 1e-12`` on which BCP certified (for eps in the list):
a sound radius, **for inputs in [0, 1] only** (the Lipschitz radii hold for every input).
``certified(eps)`` is then true wherever BCP certified a radius >= eps. Per sample and eps,
``extra["certified_by@<eps>"]`` says what certified it (``BOUND_SOURCES`` codes: 0 none, 1 global,
2 local-upper, 7 BCP ball-and-box); ``extra["bound_source"]`` the source of the final radius.

Floating point as the other l2 certificates: float64 evaluation, sound propagation with outward
rounding, the rounding error of the clean features in the ball's centre, the error of the last
layer's row differences, and the float32 inference error (IEEE, any summation order) anywhere in
the ball; the certificate is about the exact network and its float32 inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..bounds.analysis import L2Bounds
from ..bounds.ball_sound import sound_margin_lower_bounds
from ..bounds.chain import ChainError
from ..numerics import U64
from .driver import BatchFn
from .l2 import EPS_GROWTH, check_l2_model, lipschitz_setup
from .result import SOURCE_CODES, Certificate, CertificationError

#: the value of ``bound`` that selects this certificate
BCP_CHOICES = ("bcp",)
#: the pixel range the inputs are clipped to (raw input units)
PIXEL_RANGE = (0.0, 1.0)


def _eps_list(eps: float | Sequence[float] | None) -> list[float]:
    if eps is None:
        raise CertificationError("the bcp certificate certifies at fixed radii: give them (eps=[...], --eps E ...)")
    out = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if not out or any(not (e >= 0 and math.isfinite(e)) for e in out):
        raise CertificationError(f"eps must be finite and >= 0, got {out}")
    return out


def check_bcp(model: nn.Module, x: Tensor, eps: float | Sequence[float] | None = None, **_options) -> None:
    """Refuse what the BCP certificate cannot certify: no eps, inputs outside the pixel range,
    networks that are not chains with at least one hidden layer."""
    check_l2_model(model)
    _eps_list(eps)
    if isinstance(x, Tensor) and x.numel() and (float(x.min()) < PIXEL_RANGE[0] or float(x.max()) > PIXEL_RANGE[1]):
        raise CertificationError(
            f"the bcp certificate clips inputs to the pixel range [0, 1]; these inputs range over "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}] (certify them with a Lipschitz bound, e.g. --bound local-upper)")


def _chain_bounds(model: nn.Module) -> L2Bounds:
    try:
        an = L2Bounds(model)
    except ChainError as err:
        raise CertificationError(f"the bcp certificate needs a chain of Linear / Conv2d layers with activations "
                                 f"(4C3F / 6C2F style): {err}") from None
    if an.chain.depth < 2:
        raise CertificationError("the bcp certificate needs at least one hidden layer (its ball and box are on the "
                                 "last layer's input)")
    return an


def _features(an: L2Bounds, x64: Tensor):
    """Clean features (the last layer's input), a bound on their l2 rounding error, and the forward pass."""
    fwd, err64 = an.forward(x64)
    feat = fwd.post[-1]
    post_err = an.chain.stages[-2].act.error_rule(err64[-2]).flatten(1)
    n = post_err.shape[1]
    c_err = post_err.norm(dim=1) * (1 + 2 * (n + 4) * U64)
    return feat, c_err, fwd, err64


@torch.no_grad()
def bcp_margins(an: L2Bounds, x64: Tensor, y: Tensor, eps: float) -> dict[str, Tensor]:
    """Per sample and class (B, K): rigorous lower bounds of the float32 ``z_y - z_i`` over the inputs
    within ``eps`` of x in [0, 1] (``"bound"``; +inf at i = y), and the parts behind them."""
    feat, c_err, fwd, err64 = _features(an, x64)
    res = an.local(x64, eps, "upper", fwd, err64, clip=PIXEL_RANGE)
    prefix = torch.minimum(res.prefix, torch.full_like(res.prefix, an.prefix_upper))
    rho = eps * prefix * (1 + 4 * U64)
    lo, hi = res.last_box
    parts = sound_margin_lower_bounds(an.last_weight, an.last_bias, y, feat, rho, lo, hi, center_error=c_err,
                                      weight_ops=an.last_weight_ops)
    e32 = an.float32_error(fwd, err64, torch.full_like(rho, eps))  # (B, K), any input within eps
    slack = (e32 + e32.gather(1, y[:, None])) * (1 + 4 * U64)
    out = {}
    for name, v in parts.items():
        low = v - slack
        out[name] = low - 4 * U64 * (low.abs() + slack)
        out[name] = out[name].scatter(1, y[:, None], math.inf)
    out["prefix"] = prefix
    return out


def bcp_setup(model: nn.Module, model64: nn.Module, x: Tensor, y: Tensor, eps: float | Sequence[float] | None = None,
              pairs: bool = True, skip_attack: dict | bool | None = None, seed: int = 0) -> BatchFn:
    """Batches certified by BCP at every eps (module docstring), on top of ``local-upper``."""
    eps_list = _eps_list(eps)
    an = _chain_bounds(model)
    lip = lipschitz_setup(model, model64, x, y, "local-upper", eps=eps_list, pairs=pairs, skip_attack=skip_attack,
                          seed=seed)

    def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
        cert = lip(xb, yb, rows)
        x64 = xb.to(device=an.device, dtype=torch.float64)
        yd = yb.to(an.device)
        radius_lip = cert.radius.clone()
        radius = radius_lip.clone()
        source = cert.extra["bound_source"].clone()
        correct = cert.prediction == cert.label
        extra = dict(cert.extra)
        for e in sorted(set(eps_list), reverse=True):  # largest first: a radius found there covers the rest
            e_box = e * (1 + EPS_GROWTH) + 1e-12
            by = torch.where(radius_lip > e, source, torch.zeros_like(source))
            by = torch.where((radius > e) & ~(radius_lip > e), torch.full_like(by, SOURCE_CODES["bcp"]), by)
            # where no radius covers e yet and local-upper did not give up (misclassified, no margin,
            # broken by its PGD pre-filter)
            tried = torch.isfinite(cert.extra[f"lipschitz_local@{e:.6g}"])
            cand = correct & ~(radius > e) & tried
            low_min = torch.full_like(radius, math.nan)
            if bool(cand.any()):
                idx = cand.nonzero().flatten()
                m = bcp_margins(an, x64[idx.to(an.device)], yd[idx.to(an.device)], e_box)
                low = m["bound"].amin(1).cpu()
                low_min[idx] = low
                ok = idx[low > 0]
                by[ok] = SOURCE_CODES["bcp"]
                radius[ok] = torch.maximum(radius[ok], torch.full_like(radius[ok], e_box))
                source[ok] = SOURCE_CODES["bcp"]
            extra[f"certified_by@{e:.6g}"] = by
            extra[f"bcp_margin_low@{e:.6g}"] = low_min
        extra["bound_source"] = source
        extra["radius_lipschitz"] = radius_lip
        return Certificate(radius=radius, prediction=cert.prediction, label=cert.label, norm="l2", method="l2_bcp",
                           bound="upper", extra=extra)

    return batch


__all__ = ["BCP_CHOICES", "PIXEL_RANGE", "bcp_margins", "bcp_setup", "check_bcp"]
