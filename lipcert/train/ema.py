"""Exponential moving average of weights (002 §2.3), used for evaluation, certification and
checkpoints alike (unlike the report's own code, which used it only for clean accuracy).

Float buffers (mean-shift running means) are averaged with the same decay, so the EMA model's
normalisation matches its averaged weights; ``recalibrate`` can instead recompute them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``theta' <- tau * theta' + (1 - tau) * theta`` after every step.

    With ``warmup`` the decay is ``min(tau, (1 + step) / (10 + step))`` so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        tau = self.current_decay()
        for ema_t, t in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_t.dtype.is_floating_point:
                ema_t.lerp_(t.detach(), 1.0 - tau)
            else:
                ema_t.copy_(t)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
