"""CRM training objective (Fazlyab23 §2, Eq. 8) with LipLT pairwise bounds (Fazlyab23 §3).

``objective: {name: crm, t: 5, lam: 30, r0: 2.2, warmup_epochs: 10}`` in a preset trains with

    CE(z, y) + lam * mean_batch[ 1{correct, min_i R_i < r0} g(R_soft) ]

where ``R_i = (z_y - z_i) / L_yi`` and ``L_yi`` are pairwise LipLT bounds of the current weights
(:class:`lipcert.bounds.liplt.LipLTEstimator`: ``power_iters`` power-iteration steps per batch on
every composed operator, persistent vectors, last-layer rows exact; differentiable). The first
``warmup_epochs`` epochs use plain cross-entropy (authors' code: 10 epochs of CE); the power
iteration still runs on every warm-up step (without gradients), as in the authors' code, so the
first CRM step starts from tracked vectors rather than random ones (``track_warmup: false``
skips it). ``power_grad: through`` lets the gradient flow through each step's power iterations
(the authors' code; lipcert's default ``detached`` treats the vectors as constants; the two agree
once the vectors have converged, docs/liplt-crm.md). ``lam`` may also
come from ``train.schedule.lam`` and ``r0`` from ``train.schedule.r0`` (each wins over its
constant; the authors' scripts keep both constant). ``bound: naive`` swaps in the naive
pairwise bound (ablation). Settings of the authors: MNIST 4C3F t = 5,
lam = 30, R0 = 2.2; CIFAR-10 6C2F t = 5, lam = 15, R0 = 0.2 in their [-1, 1] input units (0.1 in
lipcert's raw [0, 1] units). ``after_step`` projects activation thresholds (ReLU-theta >= 0).

The authors' baselines with the same LipLT estimator (their ``--criterionType GloRo / LMT``):

* ``loss: gloro_trades`` -- ``CE(z, y) + lam KL([softmax(z), 1e-7] || softmax([z | z_bot]))``,
  ``z_bot = max_{i != y} z_i + eps L_yi`` (:func:`lipcert.losses.gloro_trades_loss`; Fazlyab23 §4
  "GloRo [5] ... with a smoothness regularizer inspired by TRADES"). The authors ramp lam
  linearly from ``--gloroInitialLambda`` to 3 over ``maxEpoch`` epochs, once per epoch:
  ``train.schedule.lam: {kind: per_epoch, of: {kind: ramp, start: 0.1, end: 3, t0: 0, t1: 400}}``.
* ``loss: lmt`` -- ``CE(z + mu eps L_y., y)`` with the shift zero at y and for misclassified
  samples (the authors' ``LMTCrossEntropy``); mu from ``train.schedule.mu`` (their schedule:
  ``{kind: geometric, start: 0.001, rate: 1.03, cap: 2}``) or the constant ``mu``.

``lipschitz`` picks the constants of the radii for every loss: "pairwise" ``L_yi`` (the authors'
``--pairwiseLipschitz``, all their published commands), "per_class" ``L_y + L_i``
(``--perClassLipschitz``) or "global" ``sqrt(2) L`` (neither flag). ``warmup_epochs`` is their
``--robustStartingEpoch`` for the baselines (plain CE before it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..bounds.liplt import LipLTEstimator
from ..losses.crm import G_CHOICES, crm_loss
from ..losses.l2 import gloro_trades_loss, pairwise_from, pairwise_worst_logits
from .objectives import Objective, StepContext, StepOutput, register_objective

POWER_GRAD = ("detached", "through")
CRM_LOSSES = ("crm", "gloro_trades", "lmt")
LIPSCHITZ_MODES = ("pairwise", "per_class", "global")


class CRMObjective(Objective):
    """Fazlyab23 Eq. 8 (see module docstring).

    Args:
        t: temperature of the soft radius (Eq. 6).
        lam: weight of the radius term (lambda of Eq. 8) when none is scheduled.
        r0: radius cap; None = no cap.
        g: "linear" (authors) or "exp" (see :mod:`lipcert.losses.crm`).
        warmup_epochs: epochs of plain cross-entropy first.
        bound: "liplt" (Fazlyab23) or "naive".
        power_iters: power-iteration steps per batch for the composed operators (authors: 10 on
            MNIST, 5 on CIFAR-10).
        power_grad: "detached" or "through" (gradient through the power iterations, authors).
        track_warmup: run the power iteration (no gradient) on warm-up steps too (authors).
        loss: "crm" (Eq. 8), "gloro_trades" or "lmt" (the authors' baselines, module docstring).
        lipschitz: "pairwise" | "per_class" | "global" constants in the radii / worst logits.
        eps: training radius of the baselines (``train.schedule.eps`` wins; authors' ``--train_eps``).
        mu: LMT's margin factor when none is scheduled (``train.schedule.mu`` wins).
    """

    def __init__(self, t: float = 5.0, lam: float = 30.0, r0: float | None = None, g: str = "linear",
                 warmup_epochs: float = 10.0, bound: str = "liplt", power_iters: int = 1,
                 power_grad: str = "detached", track_warmup: bool = True, loss: str = "crm",
                 lipschitz: str = "pairwise", eps: float = 0.0, mu: float = 1.0) -> None:
        super().__init__()
        if loss not in CRM_LOSSES:
            raise ValueError(f"loss must be one of {CRM_LOSSES}, got {loss!r}")
        if lipschitz not in LIPSCHITZ_MODES:
            raise ValueError(f"lipschitz must be one of {LIPSCHITZ_MODES}, got {lipschitz!r}")
        if loss != "crm" and not eps > 0:
            raise ValueError(f"loss {loss!r} needs a training radius eps > 0 (or train.schedule.eps), got {eps}")
        self.loss_kind, self.lipschitz_mode, self.default_eps, self.default_mu = loss, lipschitz, float(eps), float(mu)
        if not t > 0:
            raise ValueError(f"t must be > 0, got {t}")
        if g not in G_CHOICES:
            raise ValueError(f"g must be one of {G_CHOICES}, got {g!r}")
        if r0 is not None and not r0 > 0:
            raise ValueError(f"r0 must be > 0 or null, got {r0}")
        self.t, self.default_lam, self.r0, self.g = float(t), float(lam), r0, g
        if power_grad not in POWER_GRAD:
            raise ValueError(f"power_grad must be one of {POWER_GRAD}, got {power_grad!r}")
        if int(power_iters) != power_iters or power_iters < 1:
            raise ValueError(f"power_iters must be an integer >= 1, got {power_iters!r}")
        self.warmup_epochs = float(warmup_epochs)
        self.track_warmup = bool(track_warmup)
        self.estimator = LipLTEstimator(bound, int(power_iters), grad_through=power_grad == "through")

    def forward(self, model: nn.Module, x, y, ctx: StepContext) -> StepOutput:
        logits = model(x)
        lam = float(ctx.values.get("lam", self.default_lam))
        if ctx.epoch < self.warmup_epochs or (lam == 0 and self.loss_kind != "lmt"):
            if self.track_warmup:
                with torch.no_grad():
                    self.estimator(model)  # keep the power-iteration vectors tracking the weights
            return StepOutput(F.cross_entropy(logits, y), logits, {"crm_active": 0.0})
        bounds = self.estimator(model)
        pair = pairwise_from(self.lipschitz_mode, bounds.pairwise, bounds.per_class, bounds.lipschitz)
        if self.loss_kind != "crm":
            return self._baseline(logits, y, pair, bounds, lam, ctx)
        r0 = ctx.values.get("r0", self.r0)
        out = crm_loss(logits, y, pair, self.t, lam, None if r0 is None else float(r0), self.g)
        k = bounds.pairwise.shape[0]
        with torch.no_grad():
            iu = torch.triu_indices(k, k, 1, device=bounds.pairwise.device)
            finite = out.min_radius[torch.isfinite(out.min_radius)]
            metrics = {
                "lip_pair_mean": float(bounds.pairwise[iu[0], iu[1]].mean()),
                "lip_global": float(bounds.lipschitz),
                "crm_penalty": float(out.penalty),
                "crm_active": float(out.active.float().mean()),
                "radius_median": float(finite.median()) if finite.numel() else math.nan,
            }
        return StepOutput(out.loss, logits, metrics)

    def _baseline(self, logits, y, pair, bounds, lam: float, ctx: StepContext) -> StepOutput:
        """The authors' GloRo (TRADES-style) and LMT losses with the LipLT constants ``pair``."""
        eps = float(ctx.values.get("eps", self.default_eps))
        if self.loss_kind == "gloro_trades":
            worst = pairwise_worst_logits(logits, y, eps, pair)
            loss = gloro_trades_loss(logits, y, worst, lam)
            robust = (worst.argmax(1) == y) & (logits.argmax(1) == y)
            metrics = {"lam": lam}
        else:
            mu = float(ctx.values.get("mu", self.default_mu))
            worst = pairwise_worst_logits(logits, y, mu * eps, pair, correct_only=True)
            loss = F.cross_entropy(worst, y)
            robust = (pairwise_worst_logits(logits, y, eps, pair).argmax(1) == y) & (logits.argmax(1) == y)
            metrics = {"mu": mu}
        with torch.no_grad():
            metrics.update({"lip_global": float(bounds.lipschitz), "robust_acc": float(robust.float().mean())})
        return StepOutput(loss, logits, metrics)

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        """Project activation thresholds onto their constraints (theta >= 0), as the authors do."""
        for m in model.modules():
            if m is not model and hasattr(m, "project_") and not isinstance(m, Objective):
                m.project_()


register_objective("crm", CRMObjective)

__all__ = ["CRMObjective", "CRM_LOSSES", "LIPSCHITZ_MODES"]
