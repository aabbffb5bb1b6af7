"""Named bounds of a trained model (``lipcert bounds``): a small registry so new bounds plug in.

A bound is registered with :func:`register_bound` as a function ``fn(ctx: BoundContext)`` that
returns a float (a model-wide bound, reported under its name) or a tensor (N,) of per-sample values
(reported as ``<name>_mean`` / ``<name>_median`` / ``<name>_max`` and as a column of the per-sample
CSV). ``kind`` says how far it can be trusted: "exact", "upper" or "estimate" (see
:mod:`lipcert.bounds`). ``applies(model)`` says whether the model supports it.

Built-in bounds (l2, Huang21):

* ``global`` -- product of rigorous per-layer upper bounds (Eq. 2), "upper";
* ``global_power`` -- product of power-iteration estimates run to convergence, "estimate";
* ``local`` -- the local bound of Eq. 6 at ``ctx.eps`` by converged power iteration, "estimate";
* ``local_upper`` -- the sound local bound (reduced dense layers exact, conv layers global), "upper".

``ctx.cache`` shares expensive intermediate results between bounds (the float64 copy of the model
with its per-layer upper bounds is built once, inside the first bound that needs it, and its time
is counted there); :func:`compute_bounds` runs every bound inside one
:func:`~lipcert.bounds.norm_cache.shared_norms` block, so Huang21's and LipLT's bounds compute each
layer's rigorous norm once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .analysis import L2Bounds
from .chain import LipschitzChain
from .norm_cache import shared_norms


@dataclass
class BoundContext:
    model: nn.Module
    x: Tensor  # (N, ...) raw inputs
    y: Tensor  # (N,) labels
    eps: float  # radius of the ball for local bounds
    batch_size: int = 200
    options: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def l2(self) -> L2Bounds:
        if "l2" not in self.cache:
            self.cache["l2"] = L2Bounds(self.model)
        return self.cache["l2"]


@dataclass
class BoundSpec:
    name: str
    fn: Callable[[BoundContext], float | Tensor]
    kind: str
    description: str
    applies: Callable[[nn.Module], bool]


@dataclass
class BoundValue:
    name: str
    kind: str
    seconds: float
    value: float | Tensor

    @property
    def per_sample(self) -> bool:
        return isinstance(self.value, Tensor)


BOUNDS: dict[str, BoundSpec] = {}


def register_bound(
    name: str,
    fn: Callable[[BoundContext], float | Tensor],
    kind: str,
    description: str = "",
    applies: Callable[[nn.Module], bool] | None = None,
) -> None:
    """Make a bound available to ``lipcert bounds`` (see module docstring)."""
    if kind not in ("exact", "upper", "estimate"):
        raise ValueError(f"bound kind must be exact, upper or estimate, got {kind!r}")
    BOUNDS[name] = BoundSpec(name, fn, kind, description, applies or (lambda m: True))


def compute_bounds(ctx: BoundContext, names: list[str] | None = None, log=None) -> list[BoundValue]:
    """Evaluate the named bounds (default: every registered one that applies), timing each."""
    specs = [BOUNDS[n] for n in names] if names else [s for s in BOUNDS.values() if s.applies(ctx.model)]
    with shared_norms():  # every layer's rigorous norm bound once, whichever bound asks first
        return [_timed(ctx, spec, log) for spec in specs]


def _timed(ctx: BoundContext, spec: BoundSpec, log) -> BoundValue:
    if not spec.applies(ctx.model):
        raise ValueError(f"bound {spec.name!r} does not apply to {type(ctx.model).__name__}")
    t0 = time.perf_counter()
    value = spec.fn(ctx)
    dt = time.perf_counter() - t0
    value = value.detach().to(torch.float64).cpu() if isinstance(value, Tensor) else float(value)
    if log is not None:
        log(f"{spec.name}: {dt:.2f} s")
    return BoundValue(spec.name, spec.kind, dt, value)


def bounds_summary(values: list[BoundValue]) -> dict[str, Any]:
    """JSON-ready dict: scalar bounds under their name, per-sample ones as ``_mean``/``_median``/``_max``,
    plus ``seconds`` and ``kind`` per bound."""
    out: dict[str, Any] = {}
    seconds, kinds = {}, {}
    for v in values:
        if v.per_sample:
            t = v.value
            finite = t[torch.isfinite(t)]
            out[f"{v.name}_mean"] = float(finite.mean()) if finite.numel() else float("nan")
            out[f"{v.name}_median"] = float(finite.median()) if finite.numel() else float("nan")
            out[f"{v.name}_max"] = float(finite.max()) if finite.numel() else float("nan")
        else:
            out[v.name] = v.value
        seconds[v.name] = v.seconds
        kinds[v.name] = v.kind
    out["seconds"] = seconds
    out["kind"] = kinds
    return out


# --------------------------------------------------------------------------- built-in l2 bounds
def _is_l2_chain(model: nn.Module) -> bool:
    if getattr(model, "certificate", None) != "l2_lipschitz":
        return False
    try:
        LipschitzChain.from_model(model)
    except ValueError:
        return False
    return True


def _global(ctx: BoundContext) -> float:
    return ctx.l2().global_upper


def _global_power(ctx: BoundContext) -> float:
    from .lipschitz import global_sigmas

    an = ctx.l2()
    with torch.no_grad():
        sig = global_sigmas(an.chain, iters=ctx.options.get("global_iters", 5000), tol=1e-9)
    return float(sig.prod())


def _local(mode: str) -> Callable[[BoundContext], Tensor]:
    def fn(ctx: BoundContext) -> Tensor:
        an = ctx.l2()
        parts = []
        gen = torch.Generator(device=an.device).manual_seed(0)
        for s in range(0, ctx.x.shape[0], ctx.batch_size):
            res = an.local(
                ctx.x[s : s + ctx.batch_size], ctx.eps, mode,
                iters=ctx.options.get("local_iters", 2000), tol=ctx.options.get("local_tol", 1e-3), generator=gen,
            )
            parts.append(res.lipschitz.cpu())
        return torch.cat(parts)

    return fn


register_bound("global", _global, "upper", "product of rigorous per-layer norm bounds (Huang21 Eq. 2)", _is_l2_chain)
register_bound("global_power", _global_power, "estimate", "product of converged power-iteration layer norms", _is_l2_chain)
register_bound("local", _local("estimate"), "estimate", "Huang21 Eq. 6 by power iteration to tol 1e-3 (paper)", _is_l2_chain)
register_bound("local_upper", _local("upper"), "upper", "Huang21 Eq. 6, reduced dense layers exact, conv layers global", _is_l2_chain)

__all__ = ["BOUNDS", "BoundContext", "BoundSpec", "BoundValue", "bounds_summary", "compute_bounds", "register_bound"]
