"""l2 certificates from Lipschitz bounds (003): radius = min_j (z_y - z_j) / (sqrt(2) L).

If f is L-Lipschitz in l2 on a convex set containing the ball B(x, r), every logit difference
``z_y - z_j`` changes by at most ``||e_y - e_j|| L r = sqrt(2) L r`` on it (003 App. B; LMT), so
the prediction cannot change within ``r < margin / (sqrt(2) L)``.

Bounds (``bound=``):

* ``"global"`` -- L = product of rigorous per-layer upper bounds (003 Eq. 2; dense layers by float64
  SVD, conv layers by the polyphase circulant bound of ``lipcert.bounds.norms``), valid everywhere.
  Label "upper".
* ``"local-upper"`` -- for every eps in ``eps``: the local bound (003 Eq. 6) on the ball of radius
  eps' = eps (1 + 1e-6) with masks from sound box / ball propagation, reduced dense layers exact,
  conv layers at their global bound; radius ``min(eps', margin / (sqrt(2) L_local))``. Label "upper".
* ``"best"`` (default) -- per sample the largest of the sound radii above. Label "upper".
* ``"local"`` -- as ``local-upper`` but the reduced norms come from power iteration run to
  convergence (003 §4): the paper's bound. Power iteration approaches each norm from below, so this
  is an **estimate**; label "estimate" (combined with the sound global radius).

The local bound is computed only where it can matter (003 §4): correctly classified samples not
already certified at eps by the global bound and not broken at eps by a short PGD attack
(``skip_attack``; None turns the attack off).

Floating point, as :mod:`lipcert.certify.margin`: logits are computed in float64 and the margin is
lowered by a rigorous bound on their rounding error plus the error of a float32 evaluation (IEEE,
any summation order -- not TF32 or Winograd convolutions) anywhere in the certified ball; layer
bounds are rigorous upper bounds in float64; the final division is rounded down. The certificate
is then about the exact network with the stored weights and about its float32 inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..bounds.analysis import L2Bounds
from ..bounds.chain import ChainError
from ..bounds.norms import U64
from .margin import check_inputs
from .result import Certificate, CertificationError

BOUND_CHOICES = ("best", "global", "local-upper", "local")
SQRT2_UP = math.sqrt(2.0) * (1 + 4 * U64)
EPS_GROWTH = 1e-6


def _radius(margin: Tensor, lip: Tensor | float) -> Tensor:
    """``margin / (sqrt(2) L)`` rounded down (margin <= 0 gives 0)."""
    lip_t = torch.as_tensor(lip, dtype=torch.float64)
    r = margin.clamp_min(0) / (SQRT2_UP * lip_t)
    r = r * (1 - 8 * U64)
    return torch.where(torch.isfinite(r), r, torch.zeros_like(r))


def _margins(logits: Tensor, y: Tensor, err: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 margin ``z_y - max_j z_j`` and its rigorous lower bound given logit errors ``err``."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], -math.inf)
    margin = true - others.amax(1)
    e_true = err.gather(1, y[:, None])
    low = (true[:, None] - logits - e_true - err).scatter(1, y[:, None], math.inf).amin(1)
    low = low - 4 * U64 * (true.abs() + others.abs().amax(1).nan_to_num(posinf=0.0))
    return margin, low


def lipschitz_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 500,
    bound: str = "best",
    eps: float | Sequence[float] | None = None,
    skip_attack: dict | None = None,
    local_iters: int = 2000,
    local_tol: float = 1e-3,
    seed: int = 0,
) -> Certificate:
    """Certified l2 radii of an l2 Lipschitz chain (see module docstring for ``bound``).

    ``eps``: radii at which the local bound is computed (certification at those radii benefits
    from it; other radii get the best radius found). Without ``eps`` only the global bound is used.
    ``skip_attack``: PGD settings used to skip samples broken at eps (default 20 steps; None: off).
    """
    if bound not in BOUND_CHOICES:
        raise CertificationError(f"unknown l2 bound {bound!r}; choose one of {', '.join(BOUND_CHOICES)}")
    check_inputs(model, x, y)
    if getattr(model, "certificate", None) != "l2_lipschitz":
        raise CertificationError(f"{type(model).__name__} is not an l2 Lipschitz network (certificate != 'l2_lipschitz')")
    eps_list = [] if eps is None else ([float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps])
    if any(e < 0 or not math.isfinite(e) for e in eps_list):
        raise CertificationError(f"eps must be finite and >= 0, got {eps_list}")
    use_local = bound != "global" and bool(eps_list)
    mode = "estimate" if bound == "local" else "upper"
    try:
        an = L2Bounds(model)
    except ChainError as err:
        raise CertificationError(str(err)) from None
    if skip_attack is None and use_local:
        skip_attack = {"steps": 20, "restarts": 1}
    if skip_attack is False:
        skip_attack = None
    parts = []
    gen = torch.Generator(device=an.device).manual_seed(seed)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(an.device)
        yb = y[s : s + batch_size].to(an.device).long()
        if int(yb.min()) < 0:
            raise CertificationError("labels must be >= 0")
        try:
            parts.append(_certify_batch(model, an, xb, yb, eps_list if use_local else [], mode, skip_attack, local_iters, local_tol, gen))
        except (RuntimeError, IndexError) as err:
            raise CertificationError(f"model could not be evaluated on inputs of shape {tuple(xb.shape)}: {err}") from None
    if not parts:
        raise CertificationError("no samples to certify")
    cert = Certificate.cat(parts)
    cert.method = "l2_lipschitz_" + bound.replace("-", "_")
    cert.bound = "estimate" if bound == "local" and use_local else "upper"
    return cert


@torch.no_grad()
def _certify_batch(model, an: L2Bounds, x: Tensor, y: Tensor, eps_list: list[float], mode: str,
                   skip_attack: dict | None, iters: int, tol: float, gen: torch.Generator) -> Certificate:
    x64 = x.to(torch.float64)
    fwd, err64 = an.forward(x64)
    logits = fwd.logits
    pred = logits.argmax(1)
    correct = pred == y
    lip_g = an.global_upper
    margin64, _ = _margins(logits, y, err64[-1])
    r_cap = margin64.clamp_min(0) / (math.sqrt(2.0) * lip_g)
    if eps_list:
        r_cap = torch.maximum(r_cap, torch.full_like(r_cap, max(eps_list) * (1 + 2 * EPS_GROWTH)))
    err32 = an.float32_error(fwd, err64, r_cap * (1 + 1e-6))
    margin, margin_low = _margins(logits, y, err64[-1] + err32)
    r_glob = torch.where(correct, _radius(margin_low, lip_g), torch.zeros_like(margin))
    radius = r_glob.clone()
    source = torch.where(r_glob > 0, torch.ones_like(y), torch.zeros_like(y))
    extra = {
        "margin": margin.cpu(),
        "rounding_slack": (margin - margin_low).cpu(),
        "lipschitz_global": torch.full_like(margin, lip_g).cpu(),
    }
    for e in eps_list:
        e_box = e * (1 + EPS_GROWTH) + 1e-12
        lip_local = torch.full_like(margin, math.nan)
        cand = correct & (margin_low > 0) & ~(r_glob > e)
        if skip_attack and bool(cand.any()):
            from ..attacks import pgd

            idx = cand.nonzero().flatten()
            with torch.enable_grad():
                att = pgd(model, x[idx], y[idx], e, norm="l2", seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)), **skip_attack)
            cand[idx[~att.robust.to(cand.device)]] = False
        if bool(cand.any()):
            idx = cand.nonzero().flatten()
            res = an.local(x64[idx], e_box, mode, iters=iters, tol=tol, generator=gen)
            lip_local[idx] = res.lipschitz
            r_loc = torch.minimum(_radius(margin_low[idx], res.lipschitz), torch.full_like(res.lipschitz, e_box))
            better = r_loc > radius[idx]
            radius[idx[better]] = r_loc[better]
            source[idx[better]] = 3 if mode == "estimate" else 2
        extra[f"lipschitz_local@{e:.6g}"] = lip_local.cpu()
    extra["bound_source"] = source.cpu()
    return Certificate(
        radius=radius.cpu(),
        prediction=pred.cpu(),
        label=y.cpu(),
        norm="l2",
        method="l2_lipschitz",
        bound="upper",
        extra=extra,
    )


#: ``extra["bound_source"]`` codes: what each sample's radius rests on.
BOUND_SOURCES = {0: "none", 1: "global (upper)", 2: "local (upper)", 3: "local (estimate)"}

__all__ = ["BOUND_CHOICES", "BOUND_SOURCES", "lipschitz_l2"]
