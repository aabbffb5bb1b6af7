"""Training objective for hybrid "l-inf-dist Net + MLP" models (001 code's recipe, facts in
reference-numbers.md): ``kappa * CE(worst-case logits) + (1 - kappa) * CE(logits)``.

The worst-case logits are the interval upper bounds of ``z_j - z_y`` over the feature box
``f(x) +- eps L`` (0 for j = y), i.e. the negated lower bounds of :mod:`lipcert.certify.hybrid`
computed in the training dtype without rounding slack. ``eps`` comes from the ``eps`` schedule
(001 code: ramped from 0 to eps_train over the first epochs) or the ``eps`` setting; L is the
backbone's constant at p = inf (1/std). At finite p the backbone is not L-Lipschitz, so during the
l_p phase the box is a training heuristic (as in the authors' code); certification happens at p = inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..certify.hybrid import head_bounds, head_ops
from .objectives import Objective, StepContext, StepOutput, register_objective


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class HybridObjective(Objective):
    """``kappa * CE(worst) + (1 - kappa) * CE(clean)`` (001 code: kappa = 0.95)."""

    def __init__(self, kappa: float = 0.95, eps: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= kappa <= 1.0:
            raise ValueError(f"kappa must be in [0, 1], got {kappa}")
        self.kappa = float(kappa)
        self.default_eps = float(eps)

    def forward(self, model: nn.Module, x, y, ctx: StepContext) -> StepOutput:
        inner = _unwrap(model)
        if not hasattr(inner, "head") or not hasattr(inner, "backbone"):
            raise ValueError(f"objective 'hybrid' needs a hybrid model (Net + MLP head), got {type(inner).__name__}")
        logits, feats = model(x, return_features=True)  # through the (DDP) wrapper, so gradients sync
        eps = float(ctx.values.get("eps", self.default_eps))
        clean = F.cross_entropy(logits, y)
        if eps <= 0 or self.kappa == 0:
            return StepOutput(clean, logits, {"eps": eps})
        rho = torch.full((x.shape[0],), eps * inner.feature_lipschitz(at_inf=True), dtype=feats.dtype, device=feats.device)
        lower, _ = head_bounds(head_ops(inner.head, dtype=None), feats.flatten(1), rho, y, sound=False)
        worst = -lower.scatter(1, y[:, None], 0.0)
        loss = self.kappa * F.cross_entropy(worst, y) + (1 - self.kappa) * clean
        return StepOutput(loss, logits, {"eps": eps})


register_objective("hybrid", HybridObjective)
