"""Projected gradient descent (Madry et al. 2018) in l-inf and l2, on raw [0, 1] inputs.

Used for the "PGD accuracy" column (an upper bound on robust accuracy, the counterpart of the
certified lower bound) and by the soundness tests, which attack certified samples at their radius.
The attack maximises the margin loss ``max_{j != y} z_j - z_y`` (stronger than cross-entropy on
Lipschitz nets, whose logits are not scaled) and counts a sample as broken as soon as any iterate
is misclassified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class AttackResult:
    robust: Tensor  # (N,) bool: correctly classified at every iterate of every restart
    x_adv: Tensor  # (N, ...) the iterate with the lowest margin found
    margin: Tensor  # (N,) lowest margin found (negative = misclassified)

    def accuracy(self) -> float:
        return self.robust.double().mean().item() if self.robust.numel() else float("nan")

    @staticmethod
    def cat(parts: list["AttackResult"], x: Tensor) -> "AttackResult":
        """Concatenate the results of consecutive batches of ``x`` (empty ``x``: an empty result)."""
        if not parts:
            return AttackResult(robust=torch.zeros(0, dtype=torch.bool), x_adv=x.clone(), margin=torch.zeros(0))
        return AttackResult(
            robust=torch.cat([p.robust for p in parts]),
            x_adv=torch.cat([p.x_adv for p in parts]),
            margin=torch.cat([p.margin for p in parts]),
        )


@contextlib.contextmanager
def inputs_only(model: nn.Module, x: Tensor) -> Iterator[tuple[torch.device, torch.dtype]]:
    """Within the block the model's parameters need no gradient (attacks differentiate w.r.t. the
    input only); their ``requires_grad`` flags are restored afterwards. Yields the device and dtype
    inputs must have (the parameters'; ``x``'s for a model without parameters)."""
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield (params[0].device, params[0].dtype) if params else (x.device, x.dtype)
    finally:
        for p, r in zip(params, requires):
            p.requires_grad_(r)


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def _project(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    scale = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (flat * scale[:, None]).view_as(delta)


def _random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).flatten(1)
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d.shape[1])
    return (d * r * eps).view_as(x)


def _pgd_batch(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, steps: int, step_size: float,
    restarts: int, generator: torch.Generator | None,
) -> AttackResult:
    with torch.no_grad():
        best_margin = _margin(model(x), y)
    best_x = x.clone()
    robust = best_margin > 0
    # Iterates stay in the valid pixel range [0, 1], widened to contain x itself: each coordinate of
    # the clamped point lies between x and x + delta, so clamping never leaves the eps-ball (inputs
    # outside [0, 1], e.g. unnormalised pixels, would otherwise be moved farther than eps).
    lo, hi = x.clamp(max=0.0), x.clamp(min=1.0)
    for restart in range(restarts):
        delta = _random_start(x, eps, norm, generator) if restart > 0 else torch.zeros_like(x)
        delta = (torch.clamp(x + delta, lo, hi) - x).detach()
        for _ in range(steps + 1):
            delta.requires_grad_(True)
            logits = model(x + delta)
            m = _margin(logits, y)
            with torch.no_grad():
                better = m < best_margin
                best_margin = torch.where(better, m, best_margin)
                best_x[better] = (x + delta)[better]
                robust &= m > 0
            if _ == steps:
                break
            (grad,) = torch.autograd.grad(-m.sum(), delta)
            with torch.no_grad():
                if norm == "linf":
                    step = grad.sign()
                else:
                    step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
                delta = _project(delta + step_size * step, eps, norm)
                delta = torch.clamp(x + delta, lo, hi) - x
    return AttackResult(robust=robust.cpu(), x_adv=best_x.detach().cpu(), margin=best_margin.detach().cpu())


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    batch_size: int = 500,
    seed: int = 0,
) -> AttackResult:
    """PGD with ``restarts`` random starts (the first starts at x), ``steps`` steps of size
    ``step_size`` (default ``2.5 * eps / steps``), projected on the ``norm`` ball and on [0, 1].

    The model is attacked as it is (call ``model.eval()`` first for evaluation numbers).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0 or restarts < 1:
        raise ValueError(f"need eps >= 0, steps >= 0, restarts >= 1; got {eps}, {steps}, {restarts}")
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    with inputs_only(model, x) as (device, dtype):
        generator = torch.Generator(device=device).manual_seed(seed)
        parts = [
            _pgd_batch(
                model, x[s : s + batch_size].to(device, dtype), y[s : s + batch_size].to(device).long(),
                eps, norm, steps, step_size, restarts, generator,
            )
            for s in range(0, x.shape[0], batch_size)
        ]
    return AttackResult.cat(parts, x)
