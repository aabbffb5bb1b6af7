"""Training: the loop, schedules, objectives, EMA, optimisers, checkpoints and resume."""

from . import hybrid_objective, madam  # noqa: F401  (register objective 'hybrid' and optim.name: madam)
from .ema import EMA
from .loop import FINAL, LAST, Trainer, build_model, resolve_device, train
from .objectives import OBJECTIVES, Objective, StepContext, StepOutput, build_objective, register_objective
from . import objectives_l2  # noqa: F401,E402  (registers lmt, bcp, gloro, local_lip and the hold_exp_to schedule)
from . import objectives_crm  # noqa: F401,E402  (registers crm: Fazlyab23 Eq. 8 with LipLT)
from .optim import OPTIMIZERS, build_optimizer, register_optimizer
from .schedules import build_schedule, build_schedules, register_schedule

__all__ = [
    "EMA",
    "FINAL",
    "LAST",
    "OBJECTIVES",
    "OPTIMIZERS",
    "Objective",
    "StepContext",
    "StepOutput",
    "Trainer",
    "build_model",
    "build_objective",
    "build_optimizer",
    "build_schedule",
    "build_schedules",
    "register_objective",
    "register_optimizer",
    "register_schedule",
    "resolve_device",
    "train",
]
