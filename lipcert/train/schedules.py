"""Schedules: functions of training progress ``t`` (in epochs, fractional within an epoch).

Every scheduled quantity (p, lambda, eps, learning-rate factor, ...) is described in a preset by
a small dict such as ``{kind: phases, e1: 25, e2: 375, start: 8, end: 1000, final: inf}`` and
built with :func:`build_schedule`. Schedules are evaluated per iteration, so ``t`` moves by
``1 / iterations_per_epoch`` each step. Any schedule dict may add ``round_below: X`` (values
<= X rounded to the nearest integer, :class:`RoundedBelow`; ``null`` = no rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class Schedule(Protocol):
    def __call__(self, t: float) -> float: ...


def _interp(start: float, end: float, frac: float, mode: str) -> float:
    frac = min(max(frac, 0.0), 1.0)
    if mode == "linear":
        return start + (end - start) * frac
    if mode == "exp":
        if start <= 0 or end <= 0:
            raise ValueError(f"exponential interpolation needs positive endpoints, got {start} -> {end}")
        return start * (end / start) ** frac
    if mode == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown interpolation mode {mode!r}; use linear, exp or cosine")


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, t: float) -> float:
        return self.value


@dataclass(frozen=True)
class Phases:
    """Three phases (Zhang22 Appendix B): ``start`` for e1 epochs; ``start -> end`` during e2 epochs
    (exponentially by default, per iteration); ``final`` afterwards.

    p: start=8, end=1000, final=inf; lambda: start=lam0, end=lam_end, final=0. The 2021 recipe
    (Zhang21 §6.1) is ``mode=linear`` with start=6, end=100, final=100.
    """

    e1: float
    e2: float
    start: float
    end: float
    final: float
    mode: str = "exp"

    def __call__(self, t: float) -> float:
        if t < self.e1:
            return self.start
        if t < self.e1 + self.e2:
            return _interp(self.start, self.end, (t - self.e1) / self.e2, self.mode)
        return self.final


@dataclass(frozen=True)
class Ramp:
    """``start`` before t0, ``start -> end`` between t0 and t1 (linear / exp / cosine), ``end`` after.

    ``stepwise=True``: one value per epoch, as the Huang21 code's eps and kappa schedules
    (``np.linspace(start, end, t1 - t0)`` indexed by epoch): epoch ``e = floor(t)`` with
    ``t0 <= e < t1`` trains at ``interp((e - t0) / (t1 - t0 - 1))``, so the last ramp epoch
    already reaches ``end``.
    """

    start: float
    end: float
    t0: float
    t1: float
    mode: str = "linear"
    stepwise: bool = False

    def __call__(self, t: float) -> float:
        if self.stepwise:
            e, n = math.floor(t), self.t1 - self.t0
            if e < self.t0:
                return self.start
            if e >= self.t1 or n <= 1:
                return self.end
            return _interp(self.start, self.end, (e - self.t0) / (n - 1), self.mode)
        if t <= self.t0:
            return self.start
        if t >= self.t1:
            return self.end
        return _interp(self.start, self.end, (t - self.t0) / (self.t1 - self.t0), self.mode)


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from ``start`` to ``end`` over ``total`` epochs (Zhang22 §5.1 learning rate)."""

    total: float
    start: float = 1.0
    end: float = 0.0

    def __call__(self, t: float) -> float:
        return _interp(self.start, self.end, t / self.total, "cosine")


@dataclass(frozen=True)
class Step:
    """``start * gamma^k`` where k counts the milestones already passed (Zhang21 §6.1: lr / 5 at epoch 200)."""

    milestones: tuple[float, ...]
    gamma: float
    start: float = 1.0

    def __call__(self, t: float) -> float:
        return self.start * self.gamma ** sum(t >= m for m in self.milestones)


@dataclass(frozen=True)
class HoldExpDecay:
    """``start`` until t0, then ``start * rate^(t - t0)``, floored at ``end`` (Huang21 Eq. 27 style)."""

    t0: float
    rate: float
    start: float = 1.0
    end: float = 0.0

    def __call__(self, t: float) -> float:
        if t <= self.t0:
            return self.start
        return max(self.end, self.start * self.rate ** (t - self.t0))


@dataclass(frozen=True)
class ExpDecay:
    """``start`` until epoch t0, then geometric decay reaching ``end`` at epoch t1, ``end`` after.

    The learning-rate schedule of Fazlyab23's authors (their ``ExponentialLRWithStopping``, README
    recipes: lr 1e-3 -> 1e-6, i.e. ``end = 1e-3`` as a factor, t0 = 25 on MNIST / 200 on CIFAR-10,
    t1 = 400). With ``gamma = (end / start)^(1 / (t1 - t0))``:

    * ``stepwise=False``: ``start * gamma^clip(t - t0, 0, t1 - t0)`` (smooth, per iteration);
    * ``stepwise=True``: their per-epoch steps: epoch ``e = floor(t)`` trains at
      ``start * gamma^clip(e - t0 + 1, 0, t1 - t0)`` -- the first decayed epoch is t0 (one step
      after epoch t0 - 1 ends) and the last epoch before t1 trains at exactly ``end``.

    ``stepwise=False`` is the same curve as ``hold_exp_to`` (Huang21 Eq. 27, train/objectives_l2.py)
    with ``hold = t0, total = t1``.
    """

    t0: float
    t1: float
    end: float
    start: float = 1.0
    stepwise: bool = False

    def __post_init__(self) -> None:
        if not self.t1 > self.t0:
            raise ValueError(f"exp_decay needs t1 > t0, got t0={self.t0}, t1={self.t1}")
        if not (self.start > 0 and self.end > 0):
            raise ValueError(f"exp_decay needs positive start and end, got {self.start}, {self.end}")

    def __call__(self, t: float) -> float:
        span = self.t1 - self.t0
        n = math.floor(t) - self.t0 + 1 if self.stepwise else t - self.t0
        n = min(max(n, 0.0), span)
        if n >= span:
            return self.end
        return self.start * (self.end / self.start) ** (n / span)


@dataclass(frozen=True)
class Geometric:
    """Per-epoch geometric growth with a cap, the LMT mu schedule of Fazlyab23's authors
    (``LMTCrossEntropy.schedulerStep``: after each epoch ``k`` with ``k > t0``,
    ``mu <- min(mu * rate, cap)``): epoch ``e = floor(t)`` trains at ``start`` updated
    ``max(0, e - t0)`` times that way (their ``--lmtInitialLambda 1e-3``, ``--lmtLambdaGamma 1.03``,
    ``--lmtMaximumLambda 2``, ``--robustStartingEpoch`` = t0)."""

    start: float
    rate: float
    cap: float = math.inf
    t0: float = 0.0

    def __call__(self, t: float) -> float:
        v = self.start
        for _ in range(max(0, math.floor(t) - math.floor(self.t0))):
            v = min(v * self.rate, self.cap)
        return v


@dataclass(frozen=True)
class RoundedBelow:
    """Another schedule's value rounded to the nearest integer wherever it is at most ``below``
    (``round_below: 64`` in any schedule dict). Meant for p: integer p <= 64 takes the CPU
    kernel's exact binary powering instead of exp2 / log2, 2.3x / 1.9x / 1.1x faster per training
    step of a trained quick-start net near p = 9 / 20 / 48 (BENCHMARKS.md, "Integer p"). The p of
    the l_p relaxation (Zhang21) only smooths the max during training; moving it by < 0.5 (under
    6 % from p = 8 on) left the validation accuracy unchanged (docs/tuning.md, "Integer p up to 64")."""

    of: Schedule
    below: float

    def __call__(self, t: float) -> float:
        v = self.of(t)
        return float(math.floor(v + 0.5)) if v <= self.below else v


class PerEpoch:
    """Another schedule held constant within each epoch: ``of(floor(t))`` (schedules the authors
    step once per epoch, e.g. Fazlyab23's GloRo lambda: ``{kind: per_epoch, of: {kind: ramp,
    start: 0.1, end: 3, t0: 0, t1: 400}}`` is their linear ``initialLambda -> 3`` over
    ``maxEpoch`` epochs)."""

    def __init__(self, of: Any) -> None:
        self.of = build_schedule(dict(of) if isinstance(of, Mapping) else of)

    def __call__(self, t: float) -> float:
        return self.of(math.floor(t))


_KINDS: dict[str, Callable[..., Schedule]] = {
    "constant": Constant,
    "phases": Phases,
    "ramp": Ramp,
    "cosine": Cosine,
    "step": Step,
    "hold_exp_decay": HoldExpDecay,
    "exp_decay": ExpDecay,
    "geometric": Geometric,
    "per_epoch": PerEpoch,
}


def register_schedule(kind: str, factory: Callable[..., Schedule]) -> None:
    """Make a new schedule kind available to presets."""
    _KINDS[kind] = factory


def _num(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "infinity"):
        return math.inf
    if isinstance(v, list):
        return tuple(_num(i) for i in v)
    return v  # a nested schedule (per_epoch's ``of``) stays a mapping


def build_schedule(spec: float | int | str | Mapping[str, Any]) -> Schedule:
    """A schedule from a number (constant) or a dict with ``kind`` and that kind's fields."""
    if not isinstance(spec, Mapping):
        return Constant(float(_num(spec)))
    spec = dict(spec)
    if "round_below" in spec:
        raw = spec.pop("round_below")
        if raw is None:  # null: no rounding (e.g. to switch off a base preset's)
            return build_schedule(spec)
        try:
            below = float(_num(raw))
        except (TypeError, ValueError):
            below = math.nan
        if not below >= 1:
            raise ValueError(f"round_below must be a number >= 1, got {raw!r}")
        return RoundedBelow(build_schedule(spec), below)
    kind = spec.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule kind {kind!r} in {spec}; available: {sorted(_KINDS)}")
    try:
        return _KINDS[kind](**{k: _num(v) for k, v in spec.items()})
    except TypeError as err:
        raise ValueError(f"bad fields for schedule kind {kind!r}: {err}") from None


def build_schedules(specs: Mapping[str, Any]) -> dict[str, Schedule]:
    """Build every named schedule of a preset's ``schedule`` section."""
    return {name: build_schedule(spec) for name, spec in specs.items()}
