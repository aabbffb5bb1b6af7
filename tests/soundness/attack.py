"""A strong white-box attack at per-sample radii, for the red-team tests: a per-sample PGD (below)
plus lipcert's own APGD-CE and targeted APGD-DLR (:func:`lipcert.attacks.apgd`) on radius buckets.

Every certified sample is attacked at 0.999 x its own certified radius, so the attack takes a
per-sample radius tensor (lipcert's PGD / APGD take one eps per call). Several restarts of
sign-gradient PGD on the margin loss with a decaying step (a fixed-budget cousin of APGD's step
schedule), plus the ball's corners nearest the gradient, which are the l-inf maximisers for
near-linear pieces; l2 uses normalised gradient steps. Iterates stay in [0, 1] (widened to contain
x), the set the interval certificates certify. The attack also reports its best margin, so a test
can check it is not vacuous (it must break many samples at 1.5 x the radius).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipcert.attacks.pgd import inputs_only


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    true = logits.gather(1, y[:, None])[:, 0]
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def _project(delta: Tensor, eps: Tensor, norm: str) -> Tensor:
    e = eps.view(-1, *([1] * (delta.dim() - 1)))
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-30).view_as(eps)
    return delta * (eps / n).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))


def broken(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, norm: str = "linf", steps: int = 60,
           restarts: int = 4, seed: int = 0) -> Tensor:
    """(N,) bool: did the attack find an input within ``eps[i]`` of ``x[i]`` (in [0, 1] widened to
    contain x) that ``model`` (float32, as deployed) does not classify as ``y[i]``?"""
    model = model.eval()
    g = torch.Generator().manual_seed(seed)
    x, eps = x.float(), eps.float()
    lo, hi = x.clamp(max=0.0), x.clamp(min=1.0)
    e = eps.view(-1, *([1] * (x.dim() - 1)))
    found = torch.zeros(x.shape[0], dtype=torch.bool)
    with inputs_only(model, x):
        with torch.no_grad():
            found |= model(x).argmax(1) != y
        for r in range(restarts):
            if r == 0:
                delta = torch.zeros_like(x)
            elif norm == "linf":
                delta = (torch.rand(x.shape, generator=g) * 2 - 1) * e
            else:
                d = torch.randn(x.shape, generator=g)
                delta = _project(d * 1e6, eps, norm) * torch.rand(x.shape[0], generator=g).view_as(e)
            delta = torch.clamp(x + delta, lo, hi) - x
            for k in range(steps):
                delta.requires_grad_(True)
                m = _margin(model(x + delta), y)
                (grad,) = torch.autograd.grad(m.sum(), delta)
                with torch.no_grad():
                    found |= m <= 0
                    size = 2.0 * (1 - k / steps) + 0.05  # decaying step, in units of eps
                    if norm == "linf":
                        step = -grad.sign() * e * size / 4
                        corner = torch.clamp(x - grad.sign() * e, lo, hi)  # the gradient's corner
                        found |= model(corner).argmax(1) != y
                    else:
                        gn = grad.flatten(1).norm(dim=1).clamp_min(1e-30).view_as(e)
                        step = -grad / gn * e * size / 4
                    delta = _project(delta + step, eps, norm)
                    delta = torch.clamp(x + delta, lo, hi) - x
            with torch.no_grad():
                found |= model(x + delta).argmax(1) != y
    return found


def broken_strong(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, norm: str = "linf", steps: int = 40,
                  restarts: int = 3, buckets: int = 3) -> Tensor:
    """:func:`broken`, then APGD-CE and APGD-T (DLR, 3 targets) on the samples it left: APGD takes one
    radius per call, so the samples are split into ``buckets`` radius quantiles and each bucket is
    attacked at its smallest radius (never more than any sample's own, so a hit is a real break)."""
    from lipcert.attacks import apgd

    found = broken(model, x, y, eps, norm, steps, restarts)
    left = (~found).nonzero()[:, 0]
    if left.numel() == 0:
        return found
    order = left[eps[left].argsort()]
    for part in order.chunk(min(buckets, order.numel())):
        r = float(eps[part].min())
        if r <= 0:
            continue
        for loss in ("ce", "dlr-targeted"):
            res = apgd(model, x[part].float(), y[part], r, norm=norm, loss=loss, steps=30, targets=3, seed=1)
            found[part[~res.robust]] = True
    return found
