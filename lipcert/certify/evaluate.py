"""Clean, certified and attack accuracy of a model on a dataset split, as written to results.json.

The attack (empirical) column is the worst case over the attacks of the ``attack`` spec
(:mod:`lipcert.attacks.suite`; default PGD, then APGD-CE and APGD-T on the samples PGD left):
``attack_accuracy`` in results.json, with ``pgd_accuracy`` (PGD alone, when the spec starts with
PGD) and ``attack_accuracy_by`` (the accuracy after each attack) beside it.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks import describe, run_attacks
from .dispatch import certify
from .result import BOUND_KINDS, BOUND_SOURCES, SOURCE_CODES, Certificate


def eps_key(eps: float) -> str:
    """Stable JSON key for an eps value ("0.1", "0.0313725")."""
    return f"{eps:.6g}"


@dataclass
class Evaluation:
    """Per-sample outcome of an evaluation: the certificate and, per eps, the robust mask under
    the worst case of the attacks (``robust``) and after each attack in run order (``stages``)."""

    cert: Certificate
    robust: dict[float, Tensor] = field(default_factory=dict)
    stages: dict[float, dict[str, Tensor]] = field(default_factory=dict)

    @staticmethod
    def cat(parts: list["Evaluation"]) -> "Evaluation":
        """Concatenate evaluations of consecutive shards of a split (e.g. gathered from ranks)."""
        parts = [p for p in parts if p.cert.label.numel()]
        keys = parts[0].robust.keys()
        stages = {k: {a: torch.cat([p.stages[k][a] for p in parts]) for a in parts[0].stages[k]} for k in parts[0].stages}
        return Evaluation(Certificate.cat([p.cert for p in parts]), {k: torch.cat([p.robust[k] for p in parts]) for k in keys},
                          stages)


def evaluate_samples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_list: list[float],
    attack: dict[str, Any] | None = None,
    batch_size: int = 500,
    cert_kwargs: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Certify every sample and, if ``attack`` (an attack spec, :mod:`lipcert.attacks.suite`) is
    given, run its attacks at each eps.

    ``eps_list`` also reaches certifiers whose bound depends on the radius (l2 local bounds);
    ``cert_kwargs`` go to the certifier (e.g. ``{"bound": "global"}`` for l2). ``progress`` gets
    one line per stage (certificate, each attack at each eps) with its time, for long evaluations.
    """
    say = progress or (lambda line: None)
    if attack:
        describe(attack)  # an unknown attack or setting fails before any work
    model.eval()
    t0 = time.perf_counter()
    say(f"certifying {len(y)} samples ...")
    cert = certify(model, x, y, batch_size=batch_size, eps=list(eps_list), progress=say, **(cert_kwargs or {}))
    say(f"certified {len(y)} samples ({cert.method}) in {time.perf_counter() - t0:.1f} s")
    robust: dict[float, Tensor] = {}
    stages: dict[float, dict[str, Tensor]] = {}
    if attack:
        for eps in eps_list:
            res = run_attacks(model, x, y, eps, norm=cert.norm, spec=attack, batch_size=batch_size, progress=say,
                              certified=cert.certified(eps))
            robust[eps], stages[eps] = res.robust, res.stages
    return Evaluation(cert, robust, stages)


def evaluation_summary(ev: Evaluation, eps_list: list[float], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The results dict (``n, norm, method, bound, clean_accuracy, attack, eps: {key:
    {certified_accuracy, attack_accuracy, pgd_accuracy, attack_accuracy_by, soundness_violations}}``)
    of an evaluation.

    A sample certified at eps but broken by any of the attacks would be a soundness bug; it is
    counted in ``soundness_violations`` and reported loudly.
    """
    cert = ev.cert
    results: dict[str, Any] = {
        "n": int(cert.label.numel()),
        "norm": cert.norm,
        "method": cert.method,
        "bound": cert.bound,
        "bound_meaning": BOUND_KINDS[cert.bound],
        "clean_accuracy": cert.clean_accuracy(),
        "eps": {},
    }
    names = next(iter(ev.stages.values()), {})
    if names:
        results["attack"] = "+".join(names)
    for eps in eps_list:
        entry: dict[str, Any] = {"certified_accuracy": cert.certified_accuracy(eps)}
        if "margin_radius" in cert.extra:  # a combined certificate: also report the margin alone
            entry["certified_accuracy_margin"] = (cert.extra["margin_radius"] > eps).double().mean().item()
            ok = cert.certified(eps)
            by_margin = int((ok & (cert.extra["margin_radius"] > eps)).sum())
            entry["certified_by"] = {"margin": by_margin, "interval": int(ok.sum()) - by_margin}
        if "bound_source" in cert.extra:  # l2: which bound each certified sample needs at this eps
            ok = cert.certified(eps)
            by_global = ok & (cert.extra["radius_global"] > eps)
            src = cert.extra["bound_source"][ok & ~by_global]
            entry["certified_by"] = {BOUND_SOURCES[SOURCE_CODES["global"]]: int(by_global.sum())}
            entry["certified_by"].update({BOUND_SOURCES[int(k)]: int((src == k).sum()) for k in src.unique().tolist()})
        if eps in ev.robust:
            robust = ev.robust[eps]
            entry["attack_accuracy"] = robust.double().mean().item()
            stages = ev.stages.get(eps, {})
            if next(iter(stages), "pgd") == "pgd":  # PGD ran first, on every sample (older evaluations: PGD only)
                entry["pgd_accuracy"] = stages["pgd"].double().mean().item() if stages else entry["attack_accuracy"]
            if len(stages) > 1:
                entry["attack_accuracy_by"] = {a: m.double().mean().item() for a, m in stages.items()}
            violations = int((cert.certified(eps) & ~robust).sum())
            entry["soundness_violations"] = violations
            if violations and log is not None:
                log(f"SOUNDNESS VIOLATION: {violations} sample(s) certified at eps={eps} were broken by "
                    f"{results.get('attack', 'the attack')}; please report this bug")
        results["eps"][eps_key(eps)] = entry
    return results


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_list: list[float],
    attack: dict[str, Any] | None = None,
    batch_size: int = 500,
    log: Callable[[str], None] | None = None,
    cert_kwargs: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Certificate]:
    """Certify, attack and summarise in one call; returns (results dict, certificate)."""
    ev = evaluate_samples(model, x, y, eps_list, attack, batch_size, cert_kwargs)
    return evaluation_summary(ev, eps_list, log), ev.cert


def write_radii(path: str | Path, cert: Certificate) -> None:
    """CSV ``index,label,prediction,radius``, one row per sample in split order (l2 certificates
    add a ``bound`` column: what each radius rests on, e.g. "local (upper)")."""
    sources = cert.extra.get("bound_source")
    which = radius_sources(cert)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "prediction", "radius"] + (["bound"] if sources is not None else [])
                   + (["certificate"] if which is not None else []))
        for i, (lab, pred, rad) in enumerate(zip(cert.label.tolist(), cert.prediction.tolist(), cert.radius.tolist())):
            row = [i, lab, pred, repr(float(rad)) if math.isfinite(rad) else rad]
            if sources is not None:
                row.append(BOUND_SOURCES[int(sources[i])])
            if which is not None:
                row.append(which[i])
            w.writerow(row)


def radius_sources(cert: Certificate) -> list[str] | None:
    """For combined l-inf certificates (``extra`` has ``margin_radius`` and ``interval_radius``):
    per sample which certificate gave its radius ("margin", "interval" or "none")."""
    if "margin_radius" not in cert.extra or "interval_radius" not in cert.extra:
        return None
    m, iv = cert.extra["margin_radius"], cert.extra["interval_radius"]
    return ["none" if r <= 0 else ("margin" if a >= b else "interval") for r, a, b in zip(cert.radius.tolist(), m.tolist(), iv.tolist())]


def format_results(results: dict[str, Any]) -> str:
    """A short human-readable table of a results dict."""
    lines = [
        f"n={results['n']}  norm={results['norm']}  method={results['method']}  bound: {results['bound_meaning']}",
        f"clean accuracy: {results['clean_accuracy']:.4f}",
        f"{'eps':>10}  {'certified':>9}  {'attacked':>9}  {'PGD':>9}",
    ]
    combined = any("certified_accuracy_margin" in e for e in results["eps"].values())
    if combined:
        lines[-1] += f"  {'(margin alone)':>14}"

    def cell(value: float | None) -> str:
        return f"{value:9.4f}" if value is not None else f"{'-':>9}"

    for key, entry in results["eps"].items():
        attacked = entry.get("attack_accuracy", entry.get("pgd_accuracy"))
        lines.append(f"{key:>10}  {entry['certified_accuracy']:9.4f}  {cell(attacked)}  {cell(entry.get('pgd_accuracy'))}")
        if combined:
            lines[-1] += f"  {entry.get('certified_accuracy_margin', float('nan')):14.4f}"
    if results.get("attack"):
        lines.append(f"attacked = robust to every attack of {results['attack']} (an upper bound on robust accuracy)")
    return "\n".join(lines)
