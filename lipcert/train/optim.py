"""Optimisers by name: Adam (Zhang22 App. B: betas (0.9, 0.99), eps 1e-10), SGD; more register here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import math

import torch
from torch import nn

from ..config import OptimConfig

_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused Adam kernel takes these parameters (CPU or CUDA, floating point): the
    same update as the default loop, 5x faster for the quick-start MLP's 1.45 M parameters on the
    CPU machine (BENCHMARKS.md, "Fused Adam"); rounding differs."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params)


def _adam(cls: type[torch.optim.Optimizer]) -> Callable[[list[dict[str, Any]], OptimConfig], torch.optim.Optimizer]:
    """Adam or AdamW from the config, with the fused kernel where it applies."""
    return lambda groups, c: cls(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, fused=_fused(groups) or None)


OPTIMIZERS: dict[str, Callable[[Iterable[dict[str, Any]], OptimConfig], torch.optim.Optimizer]] = {
    "adam": _adam(torch.optim.Adam),
    "adamw": _adam(torch.optim.AdamW),
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}


def register_optimizer(name: str, factory: Callable[[Iterable[dict[str, Any]], OptimConfig], torch.optim.Optimizer]) -> None:
    OPTIMIZERS[name] = factory


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Each group carries ``params`` and ``lr_factor``; its lr is ``cfg.lr * lr_factor * schedule``."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.name!r}; available: {sorted(OPTIMIZERS)}")
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g.setdefault("lr_factor", 1.0)
        g["lr"] = cfg.lr * g["lr_factor"]
    return OPTIMIZERS[cfg.name](groups, cfg)


def _lp_rows(module: nn.Module):
    """(weight, p) of an l_p-distance layer (rows = output units), or None."""
    p = getattr(module, "p", None)
    w = getattr(module, "weight", None)
    if p is None or not isinstance(w, torch.Tensor) or not (hasattr(module, "relaxation") or getattr(module, "is_lp_dist_layer", False)):
        return None
    return w, float(p)


@torch.no_grad()
def lp_decay_direction(w: torch.Tensor, p: float) -> torch.Tensor:
    """Gradient of ``||w_r||_p^2 / 2`` for every row r of ``w`` (rows = dim 0), in a stable form:
    ``|w_i|^(p-2) w_i ||w||_p^(2-p) = (|w_i| / ||w||_p)^(p-2) w_i``. p = 2 gives w (plain decay);
    p = inf puts the whole row's decay on its largest entry (``||w||_inf w_max-sign`` there, 0 elsewhere)."""
    rows = w.reshape(w.shape[0], -1)
    a = rows.abs()
    if math.isinf(p):
        out = torch.zeros_like(rows)
        idx = a.argmax(1, keepdim=True)
        return out.scatter_(1, idx, rows.gather(1, idx)).view_as(w)
    m = a.amax(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    r = a / m  # in [0, 1]: powers never overflow
    norm = r.pow(p).sum(1, keepdim=True).pow(1.0 / p)  # ||w||_p / max|w|
    return ((r / norm).pow(p - 2.0) * rows).view_as(w)


@torch.no_grad()
def apply_lp_weight_decay(model: nn.Module, lr: float, decay: float) -> None:
    """Decoupled l_p weight decay (Zhang et al. 2021 code): l_p-distance layers' rows move by
    ``-lr * decay * lp_decay_direction(w, p)`` at their current p, every other parameter of
    ``model`` by ``-lr * decay * w`` (AdamW)."""
    if not decay:
        return
    done: set[int] = set()
    for module in model.modules():
        found = _lp_rows(module)
        if found is not None and id(found[0]) not in done:
            w, p = found
            w.sub_(lr * decay * lp_decay_direction(w, p))
            done.add(id(w))
    for param in model.parameters():
        if id(param) not in done and param.requires_grad:
            param.mul_(1.0 - lr * decay)
