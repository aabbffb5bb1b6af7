"""The empirical column: the worst case over a sequence of attacks, each run on the survivors.

An attack spec is the ``eval.attack`` mapping of a config (or what ``lipcert certify --attack``
builds): ``name`` plus settings. ``name`` is an attack, an alias, a list of them or a ``+``-joined
string:

* ``pgd`` - PGD on the margin (``steps``, ``restarts``, ``step_size``; :mod:`.pgd`);
* ``apgd-ce``, ``apgd-dlr``, ``apgd-t`` - APGD with the cross-entropy, DLR or targeted DLR loss
  (``apgd_steps``, ``apgd_restarts``, ``apgd_targets``; :mod:`.apgd`);
* ``apgd`` = ``apgd-ce + apgd-t`` and ``strong`` = ``pgd + apgd-ce + apgd-t`` (the default).

Each attack after the first only attacks the samples that every earlier one left robust (a sample
broken once stays broken), so the result is the worst case over all of them at the cost of the
cheap first attack plus the stronger ones on the survivors. When the caller passes the samples
certified at eps, APGD gives those a short audit (``audit_steps`` iterations, one target) rather
than the full settings: a sound certificate cannot be broken, so the full budget goes where the
empirical column can still move, while every certified sample is still attacked by PGD and APGD
(``soundness_violations``). ``audit_steps: null`` attacks certified samples in full.

On l-inf-dist nets (l_p-distance layers at p = inf) APGD follows the gradient of the model's l_p
relaxation at ``surrogate_p`` (default 8) while every iterate is judged by the real model
(:mod:`.surrogate`); PGD keeps the plain gradient, so ``pgd_accuracy`` means what it always did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .apgd import apgd
from .pgd import AttackResult, pgd
from .surrogate import smooth_gradient

ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t")
ALIASES = {"apgd": ("apgd-ce", "apgd-t"), "strong": ("pgd", "apgd-ce", "apgd-t")}
#: the default of every setting a spec may carry
DEFAULTS: dict[str, Any] = {
    "steps": 20, "restarts": 1, "step_size": None,  # PGD
    "apgd_steps": 25, "apgd_restarts": 1, "apgd_targets": 3,  # APGD (-CE, -DLR, -T)
    "audit_steps": 10,  # APGD iterations on certified samples (None: the full settings, 0: none)
    "surrogate_p": 8.0,  # l-inf-dist nets: APGD follows the gradient of the l_p relaxation at this p (None: off)
    "seed": 0,
}
DEFAULT_SPEC: dict[str, Any] = {"name": "strong", "steps": 20, "restarts": 1}


def attack_names(spec: dict[str, Any]) -> list[str]:
    """The attacks a spec runs, in order, aliases expanded; ValueError on anything unknown."""
    if not isinstance(spec, dict):
        raise ValueError(f"an attack spec is a mapping with a 'name', got {spec!r}")
    unknown = sorted(set(spec) - {"name", *DEFAULTS})
    if unknown:
        raise ValueError(f"unknown attack setting(s) {unknown}; valid: name, {', '.join(DEFAULTS)}")
    raw = spec.get("name", "strong")
    parts = raw.split("+") if isinstance(raw, str) else list(raw) if isinstance(raw, (list, tuple)) else None
    if not parts or not all(isinstance(p, str) for p in parts):
        raise ValueError(f"attack name must be a string or a list of strings, got {raw!r}")
    names: list[str] = []
    for part in (p.strip().lower() for p in parts):
        if part not in ATTACKS and part not in ALIASES:
            raise ValueError(f"unknown attack {part!r}; choose from {', '.join([*ATTACKS, *ALIASES])} "
                             f"(or a list / '+'-joined combination)")
        for n in ALIASES.get(part, (part,)):
            if n not in names:
                names.append(n)
    sp = spec.get("surrogate_p")
    if sp is not None and (isinstance(sp, bool) or not isinstance(sp, (int, float)) or not sp >= 1):
        raise ValueError(f"attack surrogate_p must be a number >= 1 or null, got {sp!r}")
    if spec.get("audit_steps") is not None and (not isinstance(spec["audit_steps"], int) or spec["audit_steps"] < 0):
        raise ValueError(f"attack audit_steps must be an integer >= 0 or null, got {spec['audit_steps']!r}")
    for key in ("steps", "apgd_steps"):
        if not isinstance(spec.get(key, 0), int) or spec.get(key, 0) < 0:
            raise ValueError(f"attack {key} must be an integer >= 0, got {spec[key]!r}")
    for key in ("restarts", "apgd_restarts", "apgd_targets"):
        if not isinstance(spec.get(key, 1), int) or spec.get(key, 1) < 1:
            raise ValueError(f"attack {key} must be an integer >= 1, got {spec[key]!r}")
    return names


def describe(spec: dict[str, Any]) -> str:
    """``"pgd+apgd-ce+apgd-t"``: what the spec runs (stored in results.json as ``attack``)."""
    return "+".join(attack_names(spec))


@dataclass
class SuiteResult(AttackResult):
    """``robust``: not broken by any attack; ``stages``: the robust mask after each attack
    (cumulative, in run order); ``seconds``: the time of each attack."""

    stages: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _label(name: str, s: dict[str, Any]) -> tuple[str, str]:
    if name == "pgd":
        return "PGD", f"{s['steps']} steps" + (f", {s['restarts']} restarts" if s["restarts"] > 1 else "")
    extra = f", {s['apgd_targets']} targets" if name == "apgd-t" else ""
    extra += f", {s['apgd_restarts']} restarts" if s["apgd_restarts"] > 1 else ""
    return name.upper(), f"{s['apgd_steps']} steps{extra}"


def run_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    spec: dict[str, Any] | None = None,
    batch_size: int = 500,
    progress: Callable[[str], None] | None = None,
    certified: Tensor | None = None,
) -> SuiteResult:
    """Run the attacks of ``spec`` (default :data:`DEFAULT_SPEC`) at ``eps``, each on the samples
    the earlier ones left robust; ``progress`` gets one line per attack with its time.

    ``certified`` (bool per sample, certified at ``eps``): APGD attacks these with the short audit
    of ``audit_steps`` iterations (one target for APGD-T) instead of the full settings, unless
    ``audit_steps`` is None; PGD attacks every sample alike."""
    spec = DEFAULT_SPEC if spec is None else spec
    names = attack_names(spec)
    s = {**DEFAULTS, **{k: v for k, v in spec.items() if k != "name"}}
    say = progress or (lambda line: None)
    n = x.shape[0]
    robust = torch.ones(n, dtype=torch.bool)
    margin = torch.full((n,), float("inf"))
    x_adv = x.detach().cpu().clone()
    stages: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    certified = torch.zeros(n, dtype=torch.bool) if certified is None else certified.cpu().bool()
    audit = s["audit_steps"] is not None
    smooth = smooth_gradient(model, s["surrogate_p"]) if any(a != "pgd" for a in names) else model
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        if name == "pgd" or not audit:
            groups = [(robust.nonzero()[:, 0], s["apgd_steps"], s["apgd_targets"], s["apgd_restarts"])]
        else:  # certified samples: a short audit for soundness (they cannot be broken if the certificate is sound)
            groups = [((robust & ~certified).nonzero()[:, 0], s["apgd_steps"], s["apgd_targets"], s["apgd_restarts"]),
                      ((robust & certified).nonzero()[:, 0], s["audit_steps"], 1, 1)]
        for live, steps, targets, restarts in groups:
            if not live.numel() or (name != "pgd" and steps == 0):
                continue
            xs, ys = x[live.to(x.device)], y[live.to(y.device)]
            if name == "pgd":
                res = pgd(model, xs, ys, eps, norm=norm, steps=s["steps"], step_size=s["step_size"], restarts=s["restarts"],
                          batch_size=batch_size, seed=s["seed"])
            else:
                loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}[name]
                res = apgd(smooth, xs, ys, eps, norm=norm, loss=loss, steps=steps, restarts=restarts, targets=targets,
                           batch_size=batch_size, seed=s["seed"] + i)
            lower = res.margin < margin[live]
            margin[live] = torch.where(lower, res.margin, margin[live])
            x_adv[live[lower]] = res.x_adv[lower].to(x_adv.dtype)
            robust[live] = res.robust
        stages[name] = robust.clone()
        seconds[name] = time.perf_counter() - t0
        title, details = _label(name, s)
        if name != "pgd":
            if audit:
                details += (f", on the {groups[0][0].numel()} uncertified left; the {groups[1][0].numel()} certified: "
                            f"{s['audit_steps']}-step audit")
            else:
                details += f", on the {groups[0][0].numel()} left"
        say(f"{title} at eps {eps:g} ({details}) in {seconds[name]:.1f} s: {int(robust.sum())}/{n} robust")
    return SuiteResult(robust=robust, x_adv=x_adv, margin=margin, stages=stages, seconds=seconds)
