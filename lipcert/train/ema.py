"""Exponential moving average of weights (EMAReport §2.3), used for evaluation, certification, PGD and
checkpoints alike (unlike the report's own code, which used it only for clean accuracy).

Float buffers (mean-shift running means) are averaged with the same decay as the weights, so the
EMA model's normalisation follows its averaged weights. Alternatively (``train.ema_recalibrate``)
the running means of the evaluated EMA model are *recomputed*: one pass over the training data in
train mode without gradients, each mean-shift layer's running mean set to the exact average of its
batch means (:func:`recalibrate`, the same procedure as batch-norm recalibration for SWA). The
averaged EMA state itself is left untouched, so training and resuming do not depend on when
evaluations happened.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..nn import MeanShiftNorm


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

    def recalibrated(self, x: Tensor, batch_size: int = 512) -> nn.Module:
        """A copy of the EMA model whose mean-shift running means are recomputed on ``x`` (see
        :func:`recalibrate`); evaluate it at the p it will be evaluated with (set p first)."""
        model = copy.deepcopy(self.model)
        return recalibrate(model, x, batch_size)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])


@torch.no_grad()
def recalibrate(model: nn.Module, x: Tensor, batch_size: int = 512) -> nn.Module:
    """Recompute every mean-shift running mean of ``model`` in place: one pass over ``x`` (in order,
    no augmentation) in train mode, no gradients; each running mean becomes the sample-weighted
    average of the batch means the layer saw (the mean it would converge to with a tiny momentum).
    Returns the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, MeanShiftNorm)]
    if not norms or x.shape[0] == 0:
        return model.eval()
    saved = [m.momentum for m in norms]
    device = next(model.parameters()).device
    model.train()
    try:
        seen = 0
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(device)
            for m in norms:
                m.momentum = xb.shape[0] / (seen + xb.shape[0])  # running mean = cumulative average
            model(xb)
            seen += xb.shape[0]
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom
    return model.eval()
