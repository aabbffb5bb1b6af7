"""Training objective for hybrid "l-inf-dist Net + MLP" models (the Zhang21 authors' code's recipe):
``kappa * CE(worst-case logits) + (1 - kappa) * CE(logits)``.

The worst-case logits are the interval upper bounds of ``z_j - z_y`` over the feature box
``f(x) +- eps L`` (0 for j = y), i.e. the negated lower bounds of :mod:`lipcert.bounds.hybrid_head`
computed in the training dtype without rounding slack. ``eps`` comes from the ``eps`` schedule
(Zhang21 code: ramped from 0 to eps_train over the first epochs) or the ``eps`` setting; L is the
backbone's constant at p = inf (1/std). At finite p the backbone is not L-Lipschitz, so during the
l_p phase the box is a training heuristic (as in the authors' code); certification happens at p = inf.

Ensembles trained jointly on their averaged logits (EMAReport Table 4: LeNet + MLP members) use the
average of the members' worst cases, the bound the ensemble certificate averages; a 1-Lipschitz
member (no head) contributes ``z_j - z_y + 2 L eps``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..bounds.hybrid_head import head_bounds, head_ops
from .objectives import Objective, StepContext, StepOutput, register_objective


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class HybridObjective(Objective):
    """``kappa * CE(worst) + (1 - kappa) * CE(clean)`` (Zhang21 code: kappa = 0.95)."""

    def __init__(self, kappa: float = 0.95, eps: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= kappa <= 1.0:
            raise ValueError(f"kappa must be in [0, 1], got {kappa}")
        self.kappa = float(kappa)
        self.default_eps = float(eps)

    def forward(self, model: nn.Module, x, y, ctx: StepContext) -> StepOutput:
        inner = _unwrap(model)
        if getattr(inner, "combine", "mean") == "vote":
            raise ValueError("objective 'hybrid' trains ensembles on averaged logits; train voting members separately "
                             "(lipcert train --seeds ...) and combine them with lipcert ensemble --combine vote")
        members = getattr(inner, "members", None)
        is_hybrid = hasattr(inner, "head") and hasattr(inner, "backbone")
        if not is_hybrid and not (members is not None and any(hasattr(m, "head") for m in members)):
            raise ValueError(f"objective 'hybrid' needs a hybrid model (Net + MLP head) or an ensemble with hybrid "
                             f"members, got {type(inner).__name__}")
        # through the (DDP) wrapper, so gradients sync
        logits, feats = model(x, return_features=True)
        eps = float(ctx.values.get("eps", self.default_eps))
        clean = F.cross_entropy(logits, y)
        if eps <= 0 or self.kappa == 0:
            return StepOutput(clean, logits, {"eps": eps})
        if is_hybrid:
            worst = _worst(inner, logits, feats, y, eps)
        else:
            worst = torch.stack([_worst(m, z, f, y, eps) for m, (z, f) in zip(members, feats)]).mean(0)
        loss = self.kappa * F.cross_entropy(worst, y) + (1 - self.kappa) * clean
        return StepOutput(loss, logits, {"eps": eps})


def _worst(member: nn.Module, logits, feats, y, eps: float):
    """Upper bounds of ``z_j - z_y`` within ``eps`` (0 at j = y): interval bounds through a hybrid's
    head, or ``z_j - z_y + 2 L eps`` for a 1-Lipschitz-times-L member."""
    if hasattr(member, "head"):
        rho = torch.full((logits.shape[0],), eps * member.feature_lipschitz(at_inf=True), dtype=feats.dtype, device=feats.device)
        lower, _ = head_bounds(head_ops(member.head, dtype=None), feats.flatten(1), rho, y, sound=False)
        return -lower.scatter(1, y[:, None], 0.0)
    true = logits.gather(1, y[:, None])
    return (logits - true + 2 * eps * member.nominal_linf_lipschitz()).scatter(1, y[:, None], 0.0)


register_objective("hybrid", HybridObjective)
