"""The papers' claims, re-measured on the embedded CPU presets with several seeds.

Each claim of the five papers lipcert implements is checked by comparing a few runs of embedded
presets (mnist5k, no data to provide). Every run is trained with ``lipcert train --seeds`` (one
run per seed, seed-major: every run's first seed before any run's second), and the script writes
a markdown table of mean and standard deviation over the seeds, with the paper's number beside
each row, cited by table: Zhang21 = Zhang et al. 2021 (ICML), Table 1; Zhang22 = Zhang et al. 2022
(ICLR), Table 2 and App. B; EMAReport = the EMA / ensemble report, Table 1; Huang21 = Huang et al. 2021
(NeurIPS), Table 2, Theorem 1 and Fig. 2a; Fazlyab23 = Fazlyab et al. 2023 (NeurIPS), Tables 1 and 2.
The papers trained far larger nets on full datasets, so only the DIRECTION of each comparison
is expected to carry over, not the numbers.

    python benchmarks/reproduce_cpu.py                      # 3 seeds, every claim (docs/reproduce.md: time)
    python benchmarks/reproduce_cpu.py --quick              # 1 seed, a few epochs per run (minutes)
    python benchmarks/reproduce_cpu.py --claims zhang21 huang21 --seeds 0 1 2 3 4
    python benchmarks/reproduce_cpu.py --table-only         # the table of the seeds finished so far

Runs go to ``--out`` (default runs/reproduce/<run>/seed-S); an interrupted invocation continues
the runs it had started (``--resume`` of ``lipcert train``) and reuses finished ones, and
``--table-only`` writes the table from the finished seeds without training (a row shows how many
seeds it has; a claim with a row of none gets no verdict).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    metric: str  # clean | cert@EPS | pgd@EPS | attack@EPS (worst attack) | bound:NAME[/KEY] (lipcert bounds)
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
        Row("mnist5k-linf certified @0.3", "linf", "cert@0.3", "91.59 (MNIST 4x4096, Zhang21 Table 1)"),
        Row("mnist5k-linf PGD @0.3", "linf", "pgd@0.3", "93.78"),
        Row("mnist5k-linf strongest attack @0.3 (PGD, APGD-CE, APGD-T)", "linf", "attack@0.3", "-"),
    ), lambda m: m[1] - m[0] <= 5.0, "Zhang21 Table 1"),
    Claim("zhang22-loss", "mixed loss (CE + clipped hinge) beats the 2021 hinge loss at eps 0.3", (
        Row("mixed loss, certified @0.3", "linf", "cert@0.3", "40.06 (CIFAR-10 8/255, Zhang22 Table 2)"),
        Row("hinge loss theta 0.9, certified @0.3", "linf-hinge", "cert@0.3", "33.30 (2021 recipe, same net)"),
    ), lambda m: m[0] > m[1], "Zhang22 §5.2"),
    Claim("zhang22-p", "3-phase p schedule (8 -> 1000 -> inf) beats training at p = inf from the start", (
        Row("3-phase p, certified @0.3", "linf", "cert@0.3", "93.20 (MNIST, Zhang22)"),
        Row("p = inf throughout, certified @0.3", "linf-pinf", "cert@0.3", "optimisation fails (Zhang21 §4, Zhang22 §4)"),
    ), lambda m: m[0] > m[1], "Zhang22 §4, App. B"),
    Claim("ema-ensemble", "EMA of the weights and a 3-member ensemble certify more than one raw model", (
        Row("single raw model, certified @0.3", "linf", "cert@0.3",
            "92.92 (MNIST Net+MLP, EMAReport Table 1); 75.82 (LeNet+MLP, Table 4)"),
        Row("EMA 0.99, certified @0.3", "linf-ema", "cert@0.3", "93.14 (Net+MLP+EMA, Table 1)"),
        Row("ensemble of 3, certified @0.3", "linf-ensemble", "cert@0.3",
            "78.75 (LeNet+MLP x10, Table 4); but Net x5+EMA 92.42 < Net 92.61 (Table 1)"),
    ), lambda m: m[1] > m[0] and m[2] > m[0], "EMAReport Tables 1 and 4"),
    Claim("huang21", "Local-Lip (local bound in training) certifies more than global-bound training at l2 1.58", (
        Row("global bound (GloRo), certified @1.58", "l2-global", "cert@1.58", "50.1 (GloRo 4C3F, Huang21 Table 2)"),
        Row("Local-Lip-G, certified @1.58", "l2-local", "cert@1.58", "55.8"),
    ), lambda m: m[1] > m[0], "Huang21 Table 2"),
    Claim("huang21-bound", "the local Lipschitz bound (sound, on the l2 ball 1.58 around each test image) lies below "
          "the global one (Local-Lip-G net; 200 test images)", (
        Row("global bound", "l2-local", "bound:global", "- (no number; CIFAR-10 curves)"),
        Row("local upper bound, mean over images", "l2-local", "bound:local_upper/local_upper_mean",
            "always below global (Huang21 Thm 1, Fig. 2a)"),
    ), lambda m: m[1] < m[0] * (1 - 1e-4), "Huang21 Thm 1, Fig. 2a"),  # below by more than float noise
    Claim("fazlyab23-bounds", "LipLT pairwise Lipschitz bounds lie below the naive ones (CRM-trained net)", (
        Row("naive pairwise L_ij, mean", "l2-crm", "bound:pairwise_naive_mean", "266.08 (MNIST 4C3F, Fazlyab23 Table 2)"),
        Row("LipLT pairwise L_ij, mean", "l2-crm", "bound:pairwise_mean", "64.10"),
    ), lambda m: m[1] < m[0], "Fazlyab23 Table 2"),
    Claim("fazlyab23-crm", "CRM certifies more than Local-Lip and GloRo at the largest eps (l2 1.58)", (
        Row("Local-Lip-G, certified @1.58", "l2-local", "cert@1.58", "55.8 (Huang21 Table 2)"),
        Row("global bound (GloRo), certified @1.58", "l2-global", "cert@1.58", "50.1 (Huang21 Table 2)"),
        Row("CRM + LipLT, certified @1.58", "l2-crm", "cert@1.58", "63.37 (Fazlyab23 Table 1)"),
    ), lambda m: m[2] > m[0] and m[2] > m[1], "Fazlyab23 Table 1"),
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


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _without(overrides: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``overrides`` minus those that set one of ``keys`` or a field below one (``train.schedule.p.e1``
    under ``train.schedule.p``): the later list wins, and a schedule it replaces keeps none of the old fields."""
    later = {_key(k) for k in keys}
    return [o for o in overrides if not any(_key(o) == k or _key(o).startswith(k + ".") for k in later)]


def run_overrides(run: Run, mode: str) -> list[str]:
    """The --set overrides of ``run`` in ``mode`` (full | quick | tiny); the run's own overrides win
    over the mode's (a run that makes p constant gets no p-phase epochs)."""
    extra: list[str] = []
    if mode in ("quick", "tiny"):
        extra += QUICK[run.family]
    if mode == "tiny":
        extra = _without(extra, TINY[run.family]) + TINY[run.family]
    return list(run.overrides) + _without(extra, run.overrides)


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


#: ``lipcert bounds`` options of the bound rows: the claims' radius, and 200 test images (local bounds
#: cost power iterations per image)
BOUND_ARGS = ("--eps", "1.58", "--limit", "200")


def metric_value(metric: str, seed_dir: Path, cli: Callable[[list[str]], int] = lipcert_main) -> float:
    """One row's number (in %, or the bound itself) for one seed's run directory.

    ``bound:NAME`` is ``lipcert bounds --bounds NAME`` (scalar bound), ``bound:NAME/KEY`` reads KEY of
    its JSON (a per-sample bound's ``NAME_mean``); the JSON is kept in the seed's directory."""
    if metric.startswith("bound:"):
        name, _, key = metric.split(":", 1)[1].partition("/")
        path = seed_dir / f"bounds-{name}.json"
        if not path.is_file():
            argv = ["bounds", str(seed_dir / "model.pt"), "--bounds", name, *BOUND_ARGS, "--json", str(path)]
            if cli(argv) != 0:
                raise RuntimeError(f"lipcert bounds failed on {seed_dir / 'model.pt'}")
        return float(json.loads(path.read_text())[key or name])
    res = json.loads((seed_dir / "results.json").read_text())
    bad = {e: v["soundness_violations"] for e, v in res["eps"].items() if v.get("soundness_violations")}
    if bad:
        raise RuntimeError(f"{seed_dir}: soundness violations {bad}: a certificate was broken by an attack")
    if metric == "clean":
        return 100.0 * res["clean_accuracy"]
    kind, eps = metric.split("@")
    entry = res["eps"][eps]
    return 100.0 * entry[{"cert": "certified_accuracy", "pgd": "pgd_accuracy", "attack": "attack_accuracy"}[kind]]


def finished(seed_dir: Path) -> bool:
    return (seed_dir / "results.json").is_file()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(claims: Sequence[Claim], values: dict[tuple[str, str], list[float]], header: dict[str, Any],
          train_seconds: dict[str, list[float]] | None = None) -> str:
    """The markdown report: one section per claim, one row per compared run, then the runs' training times.

    A row may have fewer seeds than asked for (``--table-only`` while runs are missing): its seed
    count is shown, and a claim with a row of no finished seed gets no verdict."""
    n_seeds = len(header["seeds"].split())
    lines = [f"# lipcert CPU reproduction ({header['mode']}, seeds {header['seeds']})", "",
             f"{header['date']}, {header['machine']}, load {header['load']}. {header['note']} "
             "Accuracies in %, mean ± std over seeds; the paper column is the paper's own setting "
             "(full datasets, far larger nets): compare directions, not numbers.", ""]
    for claim in claims:
        cols = [values.get((r.run, r.metric), []) for r in claim.rows]
        lines += [f"## {claim.key}: {claim.text} ({claim.source})", "",
                  "| row | run | lipcert (mean ± std) | seeds | paper |", "|---|---|---|---:|---|"]
        for row, v in zip(claim.rows, cols):
            fmt = "{:.3f} ± {:.3f}" if row.metric.startswith("bound:") else "{:.2f} ± {:.2f}"  # bounds: 3 decimals
            cell = "not run" if not v else fmt.format(*mean_std(v))
            lines.append(f"| {row.label} | {RUNS[row.run].preset} {' '.join(RUNS[row.run].overrides)} | "
                         f"{cell} | {len(v)} | {row.paper} |")
        if not all(cols):
            verdict = "Claim not measured: a run it needs has no finished seed."
        else:
            verdict = f"Claim {'holds' if claim.holds([mean_std(v)[0] for v in cols]) else 'does NOT hold'} here"
            verdict += "." if all(len(v) == n_seeds for v in cols) else " (on fewer seeds than asked for)."
        lines += ["", verdict, ""]
    if train_seconds is not None:
        lines += ["## Runs", "", "| run | preset and overrides | seeds finished | training s per seed (mean, min-max) |",
                  "|---|---|---:|---|"]
        for key, secs in train_seconds.items():
            run = RUNS[key]
            t = f"{statistics.fmean(secs):.0f} ({min(secs):.0f}-{max(secs):.0f})" if secs else "-"
            lines.append(f"| {key} | {run.preset} {' '.join(run.overrides)} | {len(secs)} | {t} |")
        total = sum(sum(v) for v in train_seconds.values())
        lines += ["", f"Training time of the finished runs, summed: {total:.0f} s ({total / 60:.1f} min; "
                  "evaluation, attacks and bounds come on top).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, cli: Callable[[list[str]], int] = lipcert_main) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; --quick: 0)")
    ap.add_argument("--quick", action="store_true", help="1 seed and a few epochs per run (minutes, not an hour)")
    ap.add_argument("--tiny", action="store_true", help="one epoch of tiny nets (seconds per run; for tests)")
    ap.add_argument("--claims", nargs="+", choices=[c.key for c in CLAIMS], help="only these claims (default all)")
    ap.add_argument("--out", default="runs/reproduce", help="folder of the runs (default runs/reproduce)")
    ap.add_argument("--table", help="write the markdown table here (default OUT/reproduce.md); it is also printed")
    ap.add_argument("--table-only", action="store_true",
                    help="train nothing: write the table from the seeds that have finished (missing ones are marked)")
    args = ap.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    seeds = args.seeds or ([0] if mode != "full" else [0, 1, 2])
    if len(set(seeds)) != len(seeds):
        ap.error(f"--seeds must be distinct, got {seeds}")
    claims = [c for c in CLAIMS if not args.claims or c.key in args.claims]
    out = Path(args.out)
    start = time.perf_counter()
    run_keys = list(dict.fromkeys(r.run for c in claims for r in c.rows))
    if not args.table_only:
        # seed-major: every run's seed 0 first, so that an interrupted invocation leaves every row measured
        for seed in seeds:
            for run_key in run_keys:
                train_run(RUNS[run_key], [seed], out / run_key, mode, cli)
    done = {k: [s for s in seeds if finished(out / k / f"seed-{s}")] for k in run_keys}
    values: dict[tuple[str, str], list[float]] = {}
    for claim in claims:
        for row in claim.rows:
            values[(row.run, row.metric)] = [metric_value(row.metric, out / row.run / f"seed-{s}", cli)
                                             for s in done[row.run]]
    train_seconds = {k: [float(json.loads((out / k / f"seed-{s}" / "results.json").read_text()).get("train_seconds", math.nan))
                         for s in done[k]] for k in run_keys}
    missing = [f"{k} seed {s}" for k in run_keys for s in seeds if s not in done[k]]
    note = (f"Written by --table-only from the finished runs in {out}; missing: {', '.join(missing) or 'none'}."
            if args.table_only else f"{time.perf_counter() - start:.0f} s for this invocation.")
    header = {"mode": mode, "seeds": " ".join(map(str, seeds)), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{cpu_model()}", "load": " ".join(f"{v:.1f}" for v in _loadavg()), "note": note}
    text = table(claims, values, header, train_seconds)
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
