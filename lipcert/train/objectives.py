"""Training objectives: wire a model, its bounds and a loss into one scalar per step.

An objective is an ``nn.Module`` (it may own learnable scalars such as the temperature of the
mixed loss, trained at ``lr * lr_factor``) called as ``objective(model, x, y, ctx)``. ``ctx``
carries the scheduled values of this iteration (``p``, ``lam``, ``eps`` ...) and the dataset
indices of the batch (for per-sample state such as power-iteration vectors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import losses


@dataclass
class StepContext:
    values: dict[str, float]  # scheduled values at this iteration
    index: Tensor  # dataset indices of the batch (on the batch's device)
    epoch: float  # training progress in epochs
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "num_samples": the training set's size


@dataclass
class StepOutput:
    loss: Tensor
    logits: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class; subclasses implement ``forward(model, x, y, ctx) -> StepOutput``."""

    #: learning-rate multiplier of this objective's own parameters
    lr_factor: float = 1.0

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """Called by the loop after every optimiser step (e.g. to project parameters); no-op here."""


def logit_scale(model: nn.Module) -> float:
    """Logit units per raw input unit: the model's nominal l-inf Lipschitz constant (``1 / std`` for
    an l-inf-dist net, whatever its current p), or 1 for models that state none."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    fn = getattr(model, "nominal_linf_lipschitz", None)
    return float(fn()) if fn is not None else 1.0


def member_outputs(model: nn.Module, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, float]]]:
    """``(logits, [(z, scale), ...])``: the model's output and what each loss term sees, with its
    logit scale. One term (the model's logits) except for voting ensembles (``combine == "vote"``),
    whose members are each trained on their own logits (independently; one data order)."""
    inner = getattr(model, "module", model)
    if getattr(inner, "combine", "mean") != "vote":
        logits = model(x)
        return logits, [(logits, logit_scale(model))]
    votes, zs = model(x, return_members=True)  # through the (DDP) wrapper, so gradients sync
    return votes, [(z, logit_scale(m)) for z, m in zip(zs, inner.members)]


class HingeObjective(Objective):
    """Hinge loss with threshold theta (Zhang21 Eq. 6): the 2021 recipe.

    ``theta`` is in raw input units, as in the papers' tables (Zhang21 §6.1: t = 0.9 for MNIST eps 0.3):
    a sample with zero loss is certified at eps = theta / 2. It is converted to logit units with
    the model's nominal Lipschitz constant (``1 / std`` of the input normalisation).
    """

    def __init__(self, theta: float, mix: float = 1.0) -> None:
        super().__init__()
        self.theta = float(theta)
        self.mix = float(mix)  # 0.75: the 2021 code's max/mean hinge mix

    def forward(self, model, x, y, ctx):
        logits, terms = member_outputs(model, x)
        loss = torch.stack([losses.hinge_loss(z, y, self.theta * scale, self.mix) for z, scale in terms]).mean()
        return StepOutput(loss, logits)


class MixedObjective(Objective):
    """Zhang22 Eq. 7: ``lam * CE(s * z) + min(hinge(z / theta), 1)`` with learnable temperature s.

    ``lam`` comes from the ``lam`` schedule (Zhang22 App. B: lam0 during e1, exponential decay to
    lam_end during e2, 0 at p = inf); s starts at 1 and trains at lr / 5 (Zhang22 App. B). ``theta``
    is the hinge threshold of Zhang22 Table 3 in raw input units (= 2 eps_train; 0.9 for MNIST eps
    0.3), converted to logit units with the model's nominal Lipschitz constant (``1 / std``).
    """

    def __init__(self, theta: float, lam: float = 0.0, temperature: float = 1.0, temperature_lr_factor: float = 0.2) -> None:
        super().__init__()
        self.theta = float(theta)
        self.default_lam = float(lam)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.lr_factor = float(temperature_lr_factor)

    def forward(self, model, x, y, ctx):
        logits, terms = member_outputs(model, x)
        lam = float(ctx.values.get("lam", self.default_lam))
        loss = torch.stack([losses.mixed_loss(z, y, self.temperature, lam, self.theta * scale) for z, scale in terms]).mean()
        return StepOutput(loss, logits, {"temperature": float(self.temperature.detach())})


OBJECTIVES: dict[str, Callable[..., Objective]] = {"hinge": HingeObjective, "mixed": MixedObjective}


def register_objective(name: str, factory: Callable[..., Objective]) -> None:
    """Make an objective available to presets (``objective: {name: ..., ...}``)."""
    OBJECTIVES[name] = factory


def build_objective(spec: dict[str, Any]) -> Objective:
    spec = dict(spec)
    name = spec.pop("name")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {sorted(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**spec)
    except TypeError as err:
        raise ValueError(f"bad settings for objective {name!r}: {err}") from None
