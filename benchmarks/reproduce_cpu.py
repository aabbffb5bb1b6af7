"""The papers' claims, re-measured on the embedded CPU presets with several seeds.

Each claim of the five papers lipcert implements is checked by comparing a few runs of embedded
presets (mnist5k, no data to provide). Every run is trained with ``lipcert train --seeds`` (one
run per seed), and the script writes a markdown table of mean and standard deviation over the
seeds, with the paper's number beside each row (from /work/shared/reference-numbers.md and the
papers' tables; the papers trained far larger nets on full datasets, so only the DIRECTION of each
comparison is expected to carry over, not the numbers).

    python benchmarks/reproduce_cpu.py                      # 3 seeds, every claim (about an hour, 2 cores)
    python benchmarks/reproduce_cpu.py --quick              # 1 seed, a few epochs per run (minutes)
    python benchmarks/reproduce_cpu.py --claims zhang21 huang21 --seeds 0 1 2 3 4

Runs go to ``--out`` (default runs/reproduce/<run>/seed-S); an interrupted invocation continues
the runs it had started (``--resume`` of ``lipcert train``) and reuses finished ones.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402


@dataclass(frozen=True)
class Run:
    """One preset (plus overrides) trained once per seed; ``family`` picks the --quick/--tiny overrides."""

    key: str
    preset: str
    family: str  # linf | linf_ensemble | l2_local | l2_crm
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    label: str
    run: str
    metric: str  # clean | cert@EPS | pgd@EPS | bound:NAME (lipcert bounds on the seed's model.pt)
    paper: str


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    rows: tuple[Row, ...]
    holds: Callable[[list[float]], bool]  # on the rows' means, in order
    source: str = ""


RUNS = {r.key: r for r in [
    Run("linf", "mnist5k-linf", "linf"),
    Run("linf-hinge", "mnist5k-linf", "linf", ("objective.name=hinge", "objective.theta=0.9")),
    Run("linf-pinf", "mnist5k-linf", "linf", ("train.schedule.p={kind: constant, value: inf}",)),
    Run("linf-ema", "mnist5k-linf-ema", "linf"),
    Run("linf-ensemble", "mnist5k-linf-ensemble", "linf_ensemble"),
    Run("l2-global", "mnist5k-l2-global", "l2_local"),
    Run("l2-local", "mnist5k-l2-local", "l2_local"),
    Run("l2-crm", "mnist5k-l2-crm", "l2_crm"),
]}

CLAIMS = [
    Claim("zhang21", "l-inf-dist net: certified accuracy close to PGD accuracy at the trained eps 0.3", (
        Row("mnist5k-linf certified @0.3", "linf", "cert@0.3", "91.59 (MNIST 4x4096, 001 Table 1)"),
        Row("mnist5k-linf PGD @0.3", "linf", "pgd@0.3", "93.78"),
    ), lambda m: m[1] - m[0] <= 5.0, "001 Table 1"),
    Claim("zhang22-loss", "mixed loss (CE + clipped hinge) beats the 2021 hinge loss at eps 0.3", (
        Row("mixed loss, certified @0.3", "linf", "cert@0.3", "40.06 (CIFAR-10 8/255, 000 Table 2)"),
        Row("hinge loss theta 0.9, certified @0.3", "linf-hinge", "cert@0.3", "33.30 (2021 recipe, same net)"),
    ), lambda m: m[0] > m[1], "000 §5.2"),
    Claim("zhang22-p", "3-phase p schedule (8 -> 1000 -> inf) beats training at p = inf from the start", (
        Row("3-phase p, certified @0.3", "linf", "cert@0.3", "93.20 (MNIST, 000)"),
        Row("p = inf throughout, certified @0.3", "linf-pinf", "cert@0.3", "optimisation fails (001 §4, 000 §4)"),
    ), lambda m: m[0] > m[1], "000 §4, App. B"),
    Claim("ema-ensemble", "EMA of the weights and a 3-member ensemble certify more than one raw model", (
        Row("single raw model, certified @0.3", "linf", "cert@0.3", "92.61 (MNIST, 002 Table)"),
        Row("EMA 0.99, certified @0.3", "linf-ema", "cert@0.3", "93.14 (Net+MLP+EMA)"),
        Row("ensemble of 3, certified @0.3", "linf-ensemble", "cert@0.3", "92.42 (Net*5+EMA)"),
    ), lambda m: m[1] > m[0] and m[2] > m[0], "002 Table 1"),
    Claim("huang21", "Local-Lip (local bound in training) certifies more than global-bound training at l2 1.58", (
        Row("global bound (GloRo), certified @1.58", "l2-global", "cert@1.58", "50.1 (GloRo 4C3F, 003 Table 2)"),
        Row("Local-Lip-G, certified @1.58", "l2-local", "cert@1.58", "55.8"),
    ), lambda m: m[1] > m[0], "003 Table 2"),
    Claim("fazlyab23-bounds", "LipLT pairwise Lipschitz bounds lie below the naive ones (CRM-trained net)", (
        Row("naive pairwise L_ij, mean", "l2-crm", "bound:pairwise_naive_mean", "266.08 (MNIST 4C3F, 004 Table 2)"),
        Row("LipLT pairwise L_ij, mean", "l2-crm", "bound:pairwise_mean", "64.10"),
    ), lambda m: m[1] < m[0], "004 Table 2"),
    Claim("fazlyab23-crm", "CRM certifies more than Local-Lip at the largest eps (l2 1.58)", (
        Row("Local-Lip-G, certified @1.58", "l2-local", "cert@1.58", "55.8 (003 Table 2)"),
        Row("CRM + LipLT, certified @1.58", "l2-crm", "cert@1.58", "63.37 (004 Table 1)"),
    ), lambda m: m[1] > m[0], "004 Table 1"),
]

#: --quick: a few epochs per run (schedules are in absolute epochs, so they shrink with it)
QUICK = {
    "linf": ["train.epochs=4", "train.schedule.p.e1=1", "train.schedule.p.e2=3", "train.schedule.lam.e1=1",
             "train.schedule.lam.e2=3", "train.eval_every=0"],
    "l2_local": ["train.epochs=3", "train.schedule.eps.t1=2", "train.schedule.lam.t1=2",
                 "optim.lr_schedule.hold=2", "optim.lr_schedule.total=3"],
    "l2_crm": ["train.epochs=3", "objective.warmup_epochs=1"],
}
QUICK["linf_ensemble"] = QUICK["linf"]
#: --tiny (tests): --quick with one epoch of tiny nets and a short attack; seconds per run
_TINY_P = ["train.epochs=1", "train.schedule.p.e1=0", "train.schedule.p.e2=1", "train.schedule.lam.e1=0",
           "train.schedule.lam.e2=1", "eval.attack.steps=2", "train.batch_size=500"]
TINY = {
    "linf": _TINY_P + ["model.width=16", "model.depth=3"],
    "linf_ensemble": _TINY_P + ["model.member.width=16", "model.member.depth=3", "model.n=2"],
    "l2_local": ["train.epochs=1", "train.schedule.eps.t1=1", "train.schedule.lam.t1=1", "optim.lr_schedule.hold=0",
                 "optim.lr_schedule.total=1", "model.width=0.0625", "eval.attack.steps=2", "train.batch_size=500"],
    "l2_crm": ["train.epochs=1", "objective.warmup_epochs=0", "model.width=0.0625", "eval.attack.steps=2",
               "train.batch_size=500"],
}


def _without_runtime(overrides: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``overrides`` minus those whose key a later override list sets again."""
    later = {k.split("=", 1)[0] for k in keys}
    return [o for o in overrides if o.split("=", 1)[0] not in later]


def run_overrides(run: Run, mode: str) -> list[str]:
    """The --set overrides of ``run`` in ``mode`` (full | quick | tiny)."""
    extra: list[str] = []
    if mode in ("quick", "tiny"):
        extra += QUICK[run.family]
    if mode == "tiny":
        extra = _without_runtime(extra, TINY[run.family]) + TINY[run.family]
    return list(run.overrides) + extra


def lipcert_main(argv: list[str]) -> int:
    """``lipcert ARGV`` in this process (the CLI's entry point)."""
    from lipcert.cli import main

    return main(argv)


def train_run(run: Run, seeds: Sequence[int], out: Path, mode: str, cli: Callable[[list[str]], int] = lipcert_main) -> None:
    """Train ``run`` for the seeds without a results.json yet (resuming those that have a checkpoint)."""
    todo = [s for s in seeds if not (out / f"seed-{s}" / "results.json").is_file()]
    if not todo:
        return
    argv = ["train", "--preset", run.preset, "--out", str(out), "--no-progress", "--seeds", *map(str, todo)]
    for o in run_overrides(run, mode):
        argv += ["--set", o]
    if any((out / f"seed-{s}" / "last.pt").is_file() for s in todo):
        argv.append("--resume")
    print(f"reproduce: {run.key}: lipcert {' '.join(argv)}", flush=True)
    if cli(argv) != 0:
        raise RuntimeError(f"training {run.key} failed; see the output above")


def metric_value(metric: str, seed_dir: Path, cli: Callable[[list[str]], int] = lipcert_main) -> float:
    """One row's number (in %, or the bound itself) for one seed's run directory."""
    if metric.startswith("bound:"):
        name = metric.split(":", 1)[1]
        path = seed_dir / f"bounds-{name}.json"
        if not path.is_file():
            if cli(["bounds", str(seed_dir / "model.pt"), "--bounds", name, "--json", str(path)]) != 0:
                raise RuntimeError(f"lipcert bounds failed on {seed_dir / 'model.pt'}")
        return float(json.loads(path.read_text())[name])
    res = json.loads((seed_dir / "results.json").read_text())
    bad = {e: v["soundness_violations"] for e, v in res["eps"].items() if v.get("soundness_violations")}
    if bad:
        raise RuntimeError(f"{seed_dir}: soundness violations {bad}: a certificate was broken by an attack")
    if metric == "clean":
        return 100.0 * res["clean_accuracy"]
    kind, eps = metric.split("@")
    entry = res["eps"][eps]
    return 100.0 * entry["certified_accuracy" if kind == "cert" else "pgd_accuracy"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(claims: Sequence[Claim], values: dict[tuple[str, str], list[float]], header: dict[str, Any]) -> str:
    """The markdown report: one section per claim, one row per compared run."""
    lines = [f"# lipcert CPU reproduction ({header['mode']}, seeds {header['seeds']})", "",
             f"{header['date']}, {header['machine']}, load {header['load']}, {header['seconds']:.0f} s. "
             "Accuracies in %, mean ± std over seeds; the paper column is the paper's own setting "
             "(full datasets, far larger nets): compare directions, not numbers.", ""]
    for claim in claims:
        means = [mean_std(values[(r.run, r.metric)])[0] for r in claim.rows]
        verdict = "holds" if claim.holds(means) else "does NOT hold"
        lines += [f"## {claim.key}: {claim.text} ({claim.source})", "",
                  "| row | run | lipcert (mean ± std) | paper |", "|---|---|---|---|"]
        for row in claim.rows:
            m, s = mean_std(values[(row.run, row.metric)])
            lines.append(f"| {row.label} | {RUNS[row.run].preset} {' '.join(RUNS[row.run].overrides)} | "
                         f"{m:.2f} ± {s:.2f} | {row.paper} |")
        lines += ["", f"Claim {verdict} here.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, cli: Callable[[list[str]], int] = lipcert_main) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0)")
    ap.add_argument("--quick", action="store_true", help="1 seed and a few epochs per run (minutes, not an hour)")
    ap.add_argument("--tiny", action="store_true", help="one epoch of tiny nets (seconds per run; for tests)")
    ap.add_argument("--claims", nargs="+", choices=[c.key for c in CLAIMS], help="only these claims (default all)")
    ap.add_argument("--out", default="runs/reproduce", help="folder of the runs (default runs/reproduce)")
    ap.add_argument("--table", help="write the markdown table here (default OUT/reproduce.md); it is also printed")
    args = ap.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    seeds = args.seeds or ([0] if mode != "full" else [0, 1, 2])
    if len(set(seeds)) != len(seeds):
        ap.error(f"--seeds must be distinct, got {seeds}")
    claims = [c for c in CLAIMS if not args.claims or c.key in args.claims]
    out = Path(args.out)
    start = time.perf_counter()
    values: dict[tuple[str, str], list[float]] = {}
    for run_key in dict.fromkeys(r.run for c in claims for r in c.rows):
        train_run(RUNS[run_key], seeds, out / run_key, mode, cli)
    for claim in claims:
        for row in claim.rows:
            values[(row.run, row.metric)] = [metric_value(row.metric, out / row.run / f"seed-{s}", cli) for s in seeds]
    header = {"mode": mode, "seeds": " ".join(map(str, seeds)), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{cpu_model()}", "load": " ".join(f"{v:.1f}" for v in _loadavg()),
              "seconds": time.perf_counter() - start}
    text = table(claims, values, header)
    path = Path(args.table) if args.table else out / "reproduce.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)
    print(f"table written to {path}")
    return 0


def _loadavg() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        return (math.nan,)


if __name__ == "__main__":
    sys.exit(main())
