"""Optimisers by name: Adam (000 App. B: betas (0.9, 0.99), eps 1e-10), SGD; more register here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..config import OptimConfig

OPTIMIZERS: dict[str, Callable[[Iterable[dict[str, Any]], OptimConfig], torch.optim.Optimizer]] = {
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay),
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
