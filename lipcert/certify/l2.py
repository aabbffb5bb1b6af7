"""l2 certificates from Lipschitz bounds (Huang21): radius = min_j (z_y - z_j) / K_yj.

If every logit difference ``z_y - z_j`` is ``K_yj``-Lipschitz in l2 on a convex set containing the
ball B(x, r), it changes by at most ``K_yj r`` there, so the prediction cannot change within
``r < min_j (z_y - z_j) / K_yj``. Two choices of K (``pairs=``):

* ``pairs=False`` -- ``K_yj = sqrt(2) L`` with L a Lipschitz bound of the whole network
  (``||e_y - e_j|| = sqrt(2)``; LMT, Huang21 §3.3): the radius ``margin / (sqrt(2) L)``.
* ``pairs=True`` (default) -- ``K_yj = ||w_y - w_j|| L_prefix``: the last layer's row difference
  times a Lipschitz bound of the layers before it, GloRo's certificate (Huang21 App. B), which is what
  the GloRo and BCP losses train for. Since ``||w_y - w_j|| <= sqrt(2) ||W_L||`` it is never looser.
  With a local bound only the varying inputs of the last layer count: ``||(w_y - w_j) I_V||``.

Bounds (``bound=``):

* ``"global"`` -- L from rigorous per-layer upper bounds (Huang21 Eq. 2; dense layers by float64 SVD,
  conv layers by the polyphase circulant bound of ``lipcert.bounds.norms``), valid everywhere.
  Label "upper".
* ``"local-upper"`` -- for every eps in ``eps``: the local bound (Huang21 Eq. 6) on the ball of radius
  eps' = eps (1 + 1e-6) with masks from sound box / ball propagation, reduced dense layers exact,
  conv layers at their global bound; radius ``min(eps', min_j margin_j / K_yj(x))``. Label "upper".
* ``"best"`` (default) -- per sample the largest of the sound radii above. Label "upper".
* ``"local"`` -- as ``local-upper`` but the reduced norms come from power iteration run to
  convergence (Huang21 §4): the paper's bound. Power iteration approaches each norm from below, so this
  is an **estimate**; label "estimate" (combined with the sound global radius).

The local bound is computed only where it can matter (Huang21 §4): correctly classified samples not
already certified at eps by the global bound and not broken at eps by a short PGD attack
(``skip_attack``; ``False`` turns the attack off).

Floating point, as :mod:`lipcert.certify.margin`: logits are computed in float64 and every margin
is lowered by a rigorous bound on their rounding error plus the error of a float32 evaluation
(IEEE, any summation order -- not TF32 or Winograd convolutions) anywhere in the certified ball;
layer and row norms are rigorous upper bounds in float64; the final division is rounded down. The
certificate is then about the exact network with the stored weights and about its float32
inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..bounds.analysis import L2Bounds, LocalResult
from ..bounds.chain import ChainError
from ..bounds.layers import UnsupportedLayer, check_eval
from ..numerics import U64
from .driver import BatchFn, Certifier
from .result import BOUND_SOURCES, SOURCE_CODES, Certificate, CertificationError

BOUND_CHOICES = ("best", "global", "local-upper", "local")
SQRT2_UP = math.sqrt(2.0) * (1 + 4 * U64)
EPS_GROWTH = 1e-6


def _pair_margins(logits: Tensor, y: Tensor, err: Tensor) -> Tensor:
    """(B, K) lower bounds of ``z_y - z_j`` given elementwise logit errors ``err`` (+inf at j = y)."""
    true = logits.gather(1, y[:, None])
    e_true = err.gather(1, y[:, None])
    low = true - logits - e_true - err
    low = low - 4 * U64 * (true.abs() + logits.abs())
    return low.scatter(1, y[:, None], math.inf)


def _radius(low: Tensor, factors: Tensor) -> Tensor:
    """``min_j low_j / K_j`` rounded down, 0 as soon as some ``low_j <= 0`` (also where K_j = 0: a
    constant difference that may be <= 0 certifies nothing); (B, K) inputs with +inf margins and
    factors at j = y."""
    r = torch.where(low > 0, low / factors, torch.zeros_like(low))
    r = r.masked_fill(torch.isposinf(low), math.inf)  # j = y (inf / inf)
    r = r.amin(1) * (1 - 8 * U64)
    return torch.where(torch.isfinite(r), r, torch.zeros_like(r))


def check_l2_model(model: nn.Module, x: Tensor | None = None, **_options) -> None:
    """Refuse models that are not l2 Lipschitz networks."""
    if getattr(model, "certificate", None) != "l2_lipschitz":
        raise CertificationError(f"{type(model).__name__} is not an l2 Lipschitz network (certificate != 'l2_lipschitz')")
    try:
        check_eval(model)
    except UnsupportedLayer as err:
        raise CertificationError(str(err)) from None


def lipschitz_setup(
    model: nn.Module,
    model64: nn.Module,
    x: Tensor,
    y: Tensor,
    bound: str = "best",
    eps: float | Sequence[float] | None = None,
    pairs: bool = True,
    skip_attack: dict | bool | None = None,
    local_iters: int = 2000,
    local_tol: float = 1e-3,
    seed: int = 0,
) -> BatchFn:
    """Batches certified by Huang21's certificates (see :func:`lipschitz_l2`); the bounds are read from
    ``model`` itself, which the PGD pre-filter also attacks (the driver runs it in eval mode)."""
    if bound not in BOUND_CHOICES:
        raise CertificationError(f"unknown l2 bound {bound!r}; choose one of {', '.join(BOUND_CHOICES)}")
    check_l2_model(model)
    eps_list = [] if eps is None else ([float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps])
    if any(e < 0 or not math.isfinite(e) for e in eps_list):
        raise CertificationError(f"eps must be finite and >= 0, got {eps_list}")
    use_local = bound != "global" and bool(eps_list)
    mode = "estimate" if bound == "local" else "upper"
    try:
        an = L2Bounds(model)
    except ChainError as err:
        raise CertificationError(str(err)) from None
    if skip_attack is None or skip_attack is True:
        skip_attack = {"steps": 20, "restarts": 1}
    gen = torch.Generator(device=an.device).manual_seed(seed)
    method = "l2_lipschitz_" + bound.replace("-", "_") + ("" if pairs else "_sqrt2")
    label = "estimate" if bound == "local" and use_local else "upper"
    k = an.last_weight.shape[0]

    def batch(xb: Tensor, yb: Tensor, rows: slice) -> Certificate:
        if int(yb.min()) < 0 or int(yb.max()) >= k:
            raise CertificationError(f"labels must be in [0, {k})")
        cert = _certify_batch(model, an, xb, yb, eps_list if use_local else [], mode, skip_attack or None,
                              local_iters, local_tol, gen, pairs)
        cert.method, cert.bound = method, label
        return cert

    return batch


#: Huang21's certificates (``bound``: global, local-upper, local, best).
LIPSCHITZ_L2 = Certifier("l2 Lipschitz", "l2", lipschitz_setup, check=check_l2_model, bounds=BOUND_CHOICES,
                         float64_inputs=False, eval_model=True)


def lipschitz_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    batch_size: int = 500,
    bound: str = "best",
    eps: float | Sequence[float] | None = None,
    pairs: bool = True,
    skip_attack: dict | bool | None = None,
    local_iters: int = 2000,
    local_tol: float = 1e-3,
    seed: int = 0,
) -> Certificate:
    """Certified l2 radii of an l2 Lipschitz chain (see the module docstring for ``bound``/``pairs``).

    ``eps``: radii at which the local bound is computed (certification at those radii benefits
    from it; elsewhere the best radius found counts). Without ``eps`` only the global bound is used.
    ``skip_attack``: PGD settings used to skip samples broken at eps (default 20 steps; False: off).
    """
    return LIPSCHITZ_L2(model, x, y, batch_size=batch_size, bound=bound, eps=eps, pairs=pairs, skip_attack=skip_attack,
                        local_iters=local_iters, local_tol=local_tol, seed=seed)


def _factors(an: L2Bounds, y: Tensor, pairs: bool, prefix: Tensor | float, total: Tensor | float, mask: Tensor | None) -> Tensor:
    """(B, K) Lipschitz factors of ``z_y - z_j`` (+inf at j = y); see the module docstring."""
    k_classes = an.last_weight.shape[0]
    if pairs:
        k = an.row_difference_norms(y, mask) * torch.as_tensor(prefix, dtype=torch.float64, device=y.device).reshape(-1, 1)
    else:
        k = SQRT2_UP * torch.as_tensor(total, dtype=torch.float64, device=y.device).reshape(-1, 1).expand(y.shape[0], k_classes)
    own = torch.zeros(y.shape[0], k_classes, dtype=torch.bool, device=y.device).scatter_(1, y[:, None], True)
    return (k * (1 + 8 * U64)).masked_fill(own, math.inf)


@torch.no_grad()
def _certify_batch(model, an: L2Bounds, x: Tensor, y: Tensor, eps_list: list[float], mode: str,
                   skip_attack: dict | None, iters: int, tol: float, gen: torch.Generator, pairs: bool) -> Certificate:
    x64 = x.to(torch.float64)
    fwd, err64 = an.forward(x64)
    logits = fwd.logits
    pred = logits.argmax(1)
    correct = pred == y
    k_glob = _factors(an, y, pairs, an.prefix_upper, an.global_upper, None)
    # float32-inference slack for every input within the largest radius a bound could give:
    # the global radius, and (for local bounds) eps'
    r_cap = _radius(_pair_margins(logits, y, torch.zeros_like(logits)), k_glob) * (1 + 1e-6)
    low_glob = _pair_margins(logits, y, err64[-1] + an.float32_error(fwd, err64, r_cap))
    low = low_glob
    if eps_list:
        # covers e_box = eps (1 + EPS_GROWTH) + 1e-12 also for eps < 1e-6
        r_cap_loc = torch.full_like(r_cap, (max(eps_list) * (1 + EPS_GROWTH) + 1e-12) * (1 + EPS_GROWTH))
        low = _pair_margins(logits, y, err64[-1] + an.float32_error(fwd, err64, torch.maximum(r_cap, r_cap_loc)))
    margin = _pair_margins(logits, y, torch.zeros_like(logits)).amin(1)
    margin_low = low.amin(1)
    r_glob = torch.where(correct, _radius(low_glob, k_glob), torch.zeros_like(margin))
    radius = r_glob.clone()
    source = torch.where(r_glob > 0, torch.full_like(y, SOURCE_CODES["global"]), torch.zeros_like(y))
    extra = {
        "margin": margin.cpu(),
        "rounding_slack": (margin - margin_low).cpu(),
        "lipschitz_global": torch.full_like(margin, an.global_upper).cpu(),
        "radius_global": r_glob.cpu(),
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
            res: LocalResult = an.local(x64[idx], e_box, mode, iters=iters, tol=tol, generator=gen)
            lip_local[idx] = res.lipschitz
            k_loc = _factors(an, y[idx], pairs, res.prefix, res.lipschitz, res.last_mask)
            r_loc = torch.minimum(_radius(low[idx], k_loc), torch.full_like(res.lipschitz, e_box))
            better = r_loc > radius[idx]
            radius[idx[better]] = r_loc[better]
            source[idx[better]] = SOURCE_CODES["local" if mode == "estimate" else "local-upper"]
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


__all__ = ["BOUND_CHOICES", "BOUND_SOURCES", "LIPSCHITZ_L2", "lipschitz_l2"]
