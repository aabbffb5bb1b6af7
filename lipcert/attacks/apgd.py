"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1) in l-inf and l2, on raw [0, 1] inputs.

APGD is PGD with momentum (alpha = 0.75) whose step size starts at 2 eps and is halved at the
checkpoints w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06))
when, since the previous checkpoint, the loss rose in fewer than rho = 75 % of the steps
(condition 1) or neither the step size nor the best loss changed (condition 2); after a halving the
iterate restarts from the best point found. All of this is bookkept per sample.

Losses (maximised): ``"ce"`` (cross-entropy), ``"dlr"`` (Difference of Logits Ratio, Eq. 6:
``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, invariant to shifts and scales of the logits) and
``"dlr-targeted"`` (Eq. 7: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``), run once per target t
among the ``targets`` highest non-true logits at x, as APGD-T. With fewer than 3 (4) classes the
DLR (targeted DLR) denominator is dropped: the loss is the plain (targeted) logit margin.

A sample counts as broken as soon as any evaluated iterate is misclassified, as in :func:`pgd`;
broken samples are dropped from the batch at the next checkpoint (their ``x_adv`` is a
misclassified point, not necessarily the one of lowest margin). Iterates stay in the eps-ball and
in [0, 1] widened to contain x (the convention of ``pgd.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pgd import AttackResult, _margin, _project, _random_start, inputs_only

LOSSES = ("ce", "dlr", "dlr-targeted")

_TINY = 1e-12


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps), j >= 1, at which APGD may halve its step size."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0 + 1e-9:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({w for w in (math.ceil(pj * steps - 1e-9) for pj in p[1:]) if 0 < w < steps})


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-sample DLR loss (Eq. 6) or, with ``target``, targeted DLR (Eq. 7); larger = closer to
    misclassification."""
    k = logits.shape[1]
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        denom = ordered[:, 0] - ordered[:, 2] if k >= 3 else torch.ones_like(true)
        return -(true - other) / (denom + _TINY)
    other = logits.gather(1, target[:, None])[:, 0]
    denom = ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 if k >= 4 else torch.ones_like(true)
    return -(true - other) / (denom + _TINY)


def _loss(name: str, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return dlr_loss(logits, y, target if name == "dlr-targeted" else None)


def _direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *[1] * (grad.dim() - 1))


def _apgd_run(
    model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, eps: float, norm: str, steps: int, loss: str,
    start: Tensor, momentum: float, rho: float, best_margin: Tensor, best_x: Tensor, robust: Tensor,
) -> None:
    """One APGD run (Algorithm 1) of ``steps`` iterations from ``x + start`` on the whole batch;
    updates ``best_margin``, ``best_x`` and ``robust`` (all indexed like ``x``) in place."""
    lo, hi = x.clamp(max=0.0), x.clamp(min=1.0)
    shape = (-1, *[1] * (x.dim() - 1))

    def proj(z: Tensor, x0: Tensor, lo0: Tensor, hi0: Tensor) -> Tensor:
        return torch.clamp(x0 + _project(z - x0, eps, norm), lo0, hi0)

    # state of the samples still attacked; ``idx`` maps them into the batch
    idx = torch.arange(x.shape[0], device=x.device)
    s = {"x": x, "y": y, "lo": lo, "hi": hi}
    if target is not None:
        s["t"] = target

    def evaluate(xk: Tensor) -> tuple[Tensor, Tensor]:
        xk = xk.detach().requires_grad_(True)
        logits = model(xk)
        value = _loss(loss, logits, s["y"], s.get("t"))
        (grad,) = torch.autograd.grad(value.sum(), xk)
        with torch.no_grad():
            m = _margin(logits.detach(), s["y"])
            better = m < best_margin[idx]
            best_margin[idx] = torch.where(better, m, best_margin[idx])
            best_x[idx[better]] = xk.detach()[better]
            robust[idx] &= m > 0
        return value.detach(), grad.detach()

    with torch.no_grad():
        x0 = proj(x + start, x, lo, hi)
    l0, g0 = evaluate(x0)
    if steps == 0:
        return
    eta = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        x1 = proj(x0 + eta.view(shape) * _direction(g0, norm), x, lo, hi)
    l1, g1 = evaluate(x1)
    up = l1 > l0
    s.update(
        prev=x0, cur=x1, g=g1, l=l1, eta=eta,
        best=torch.where(up.view(shape), x1, x0), best_g=torch.where(up.view(shape), g1, g0), fmax=torch.maximum(l0, l1),
        rises=up.to(x.dtype), eta_last=eta.clone(), fmax_last=l0.clone(),
    )
    marks = checkpoints(steps)
    last_mark = 0
    for k in range(1, steps):
        with torch.no_grad():
            cur, d = s["cur"], s["eta"].view(shape)
            z = proj(cur + d * _direction(s["g"], norm), s["x"], s["lo"], s["hi"])
            new = proj(cur + momentum * (z - cur) + (1 - momentum) * (cur - s["prev"]), s["x"], s["lo"], s["hi"])
        l_new, g_new = evaluate(new)
        with torch.no_grad():
            if k in marks:  # condition 1 counts f(x^(i+1)) > f(x^(i)) for i in [w_{j-1}, w_j)
                cond1 = s["rises"] < rho * (k - last_mark)
                cond2 = (s["eta"] == s["eta_last"]) & (s["fmax"] == s["fmax_last"])
                s["eta_last"], s["fmax_last"] = s["eta"].clone(), s["fmax"].clone()
                s["rises"] = torch.zeros_like(s["rises"])
                last_mark = k
            s["rises"] = s["rises"] + (l_new > s["l"]).to(x.dtype)
            better = l_new > s["fmax"]
            s["fmax"] = torch.where(better, l_new, s["fmax"])
            s["best"] = torch.where(better.view(shape), new, s["best"])
            s["best_g"] = torch.where(better.view(shape), g_new, s["best_g"])
            s["prev"], s["cur"], s["g"], s["l"] = cur, new, g_new, l_new
            if k in marks:
                halve = cond1 | cond2
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                h = halve.view(shape)
                # restart from the best point, with no momentum carried over
                s["cur"] = torch.where(h, s["best"], s["cur"])
                s["prev"] = torch.where(h, s["best"], s["prev"])
                s["g"] = torch.where(h, s["best_g"], s["g"])
                s["l"] = torch.where(halve, s["fmax"], s["l"])
                keep = robust[idx]  # drop the samples already broken
                if not bool(keep.any()):
                    return
                if not bool(keep.all()):
                    idx = idx[keep]
                    s = {key: v[keep] for key, v in s.items()}


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    steps: int = 100,
    restarts: int = 1,
    targets: int = 9,
    batch_size: int = 500,
    seed: int = 0,
    momentum: float = 0.75,
    rho: float = 0.75,
    progress: Callable[[str], None] | None = None,
) -> AttackResult:
    """APGD with ``loss`` in ``LOSSES`` (see the module docstring), ``steps`` iterations per run,
    ``restarts`` runs from random points of the ball (only on samples not broken yet) and, for
    ``"dlr-targeted"``, one set of runs per target among the ``targets`` most likely wrong classes.

    Deterministic given ``seed``. The model is attacked as it is (call ``model.eval()`` first).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if eps < 0 or steps < 0 or restarts < 1 or targets < 1:
        raise ValueError(f"need eps >= 0, steps >= 0, restarts >= 1, targets >= 1; got {eps}, {steps}, {restarts}, {targets}")
    parts = []
    with inputs_only(model, x) as (device, dtype):
        generator = torch.Generator(device=device).manual_seed(seed)
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s : s + batch_size].to(device, dtype), y[s : s + batch_size].to(device).long()
            with torch.no_grad():
                logits = model(xb)
            best_margin = _margin(logits, yb)
            best_x, robust = xb.clone(), best_margin > 0
            n_classes = logits.shape[1]
            if loss == "dlr-targeted":
                ranked = logits.scatter(1, yb[:, None], float("-inf")).argsort(dim=1, descending=True)
                plan = [ranked[:, t] for t in range(min(targets, n_classes - 1))]
            else:
                plan = [None]
            for target in plan:
                for _ in range(restarts):
                    start = _random_start(xb, eps, norm, generator)  # drawn for every sample: determinism
                    live = robust.nonzero()[:, 0]
                    if live.numel() == 0:
                        continue
                    sub_m, sub_x, sub_r = best_margin[live], best_x[live], robust[live]
                    _apgd_run(model, xb[live], yb[live], None if target is None else target[live], eps, norm, steps, loss,
                              start[live], momentum, rho, sub_m, sub_x, sub_r)
                    best_margin[live], best_x[live], robust[live] = sub_m, sub_x, sub_r
            parts.append(AttackResult(robust=robust.cpu(), x_adv=best_x.detach().cpu(), margin=best_margin.detach().cpu()))
            if progress is not None:
                progress(f"{min(s + batch_size, x.shape[0])}/{x.shape[0]} samples")
    return AttackResult.cat(parts, x)
