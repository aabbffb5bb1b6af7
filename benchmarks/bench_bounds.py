"""Benchmark of Lipschitz bounds: naive vs LipLT vs pairwise (issue 6; results: BENCHMARKS.md "Bounds").

For 4C3F (MNIST 1x28x28), 6C2F (CIFAR-10 3x32x32) and 8C2F (TinyImageNet 3x64x64) ReLU networks of
Huang21 App. C.1 / Fazlyab23 Table 1 (``--width`` scales every layer; random weights -- the times do not
depend on them) it times, in one run:

* ``naive-power``  -- one training step of the naive bound: one power-iteration step on every
  layer + exact last-layer rows, forward + backward (``LipLTEstimator("naive")``);
* ``liplt-power``  -- one training step of pairwise LipLT (what CRM adds to a step): one batched
  power-iteration step on all O(L^2) composed operators + exact last-layer rows + Eq. 19,
  forward + backward (``LipLTEstimator("liplt")``); also the number of sequential layer calls
  per sweep (L + 1: Fazlyab23 §3.1 "Complexity", O(L) wall time where a GPU runs each call's batch in
  parallel);
* ``pairwise-rows`` -- the K x K exact last-layer part alone (one adjoint sweep of K vectors);
* ``naive``        -- the provable naive bound (float64 SVD / polyphase conv bound per layer);
* ``liplt``        -- the provable LipLT bound used by certificates (materialised spans within
  the budget, products otherwise; ``--madds`` caps each span).

and, with ``--depths``, the two training-step costs for plain ReLU MLPs of growing depth L.
Each fast timing is the median of ``--repeats`` runs after one warm-up; the provable bounds run
once. ``--markdown BENCHMARKS.md`` replaces (or appends) the "Bounds" section there with the
table, the command, the machine (lscpu model name), the date and the load average.

Example (CPU, a few minutes)::

    python benchmarks/bench_bounds.py --width 0.25 --repeats 3 --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from machine import cpu_model, write_section  # noqa: E402  (benchmarks/machine.py: the script folder is on sys.path)
from torch import nn  # noqa: E402

from lipcert.bounds.liplt import LipLTEstimator, _row_quantities, liplt, naive_bounds  # noqa: E402
from lipcert.bounds.ltnet import LTNet, SweepState  # noqa: E402
from lipcert.bounds.span_norms import Budget  # noqa: E402
from lipcert.models import build  # noqa: E402
from lipcert.models.mcnf import MCNF  # noqa: E402
from lipcert.nn.activations import ReLU  # noqa: E402
from lipcert.nn.common import Flatten  # noqa: E402

NETS = {"4c3f": (1, 28, 28), "6c2f": (3, 32, 32), "8c2f": (3, 64, 64)}
SECTION = "## Bounds: naive vs LipLT vs pairwise (`benchmarks/bench_bounds.py`)"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step(est: LipLTEstimator, model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    out = est(model)
    out.pairwise.sum().backward()


def rows_only(model: nn.Module) -> None:
    net = LTNet.from_model(model)
    rows, _ = net.rows()
    _row_quantities(rows[net.depth], 0.0, False)[0].sum().backward()


def bench_net(name: str, width: float, repeats: int, madds: float, upper: bool) -> dict:
    model = build(name, in_shape=NETS[name], activation="relu", width=width, num_classes=200 if name == "8c2f" else 10)
    params = sum(p.numel() for p in model.parameters())
    net = LTNet.from_model(model)
    spans = net.spans()
    state = SweepState()
    with torch.no_grad():
        net.sweep_forward(spans, [torch.randn(1, *sp.in_shape) for sp in spans], state)
    row = {"net": name, "width": width, "layers": net.depth + 1, "params": params, "hidden_spans": len(spans),
           "calls_per_sweep": state.calls, "max_batch_per_call": max(state.batch_sizes)}
    row["naive_power_s"] = timed(lambda: step(LipLTEstimator("naive", 1), model), repeats)
    est = LipLTEstimator("liplt", 1)
    row["liplt_power_s"] = timed(lambda: step(est, model), repeats)
    row["rows_s"] = timed(lambda: rows_only(model), repeats)
    t0 = time.perf_counter()
    nv = naive_bounds(model)
    row["naive_s"] = time.perf_counter() - t0
    row["naive_pair_mean"] = float(nv.pairs().mean())
    if upper:
        t0 = time.perf_counter()
        lt = liplt(model, "upper", budget=Budget(max_madds=madds))
        row["liplt_s"] = time.perf_counter() - t0
        row["liplt_pair_mean"] = float(lt.pairs().mean())
        row["exact_spans"] = sum(1 for k in lt.span_kinds.values() if k == "exact")
    return row


def bench_depth(depth: int, width: int, repeats: int) -> dict:
    torch.manual_seed(0)
    layers: list[nn.Module] = [Flatten(), nn.Linear(784, width), ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), ReLU()]
    layers.append(nn.Linear(width, 10))
    model = MCNF(*layers, in_shape=(1, 28, 28))
    net = LTNet.from_model(model)
    est = LipLTEstimator("liplt", 1)
    return {"depth": depth, "hidden_spans": len(net.spans()), "calls_per_sweep": net.depth + 1,
            "naive_power_s": timed(lambda: step(LipLTEstimator("naive", 1), model), repeats),
            "liplt_power_s": timed(lambda: step(est, model), repeats)}


def fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def tables(rows: list[dict], deep: list[dict]) -> str:
    out = ["| net | width | layers | params | hidden spans | layer calls / sweep (max batch) | naive-power step s | "
           "liplt-power step s | pairwise rows s | naive (upper) s | liplt (upper) s | exact spans | mean L_ij naive | "
           "mean L_ij LipLT |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['net']} | {r['width']} | {r['layers']} | {r['params']} | {r['hidden_spans']} | "
                   f"{r['calls_per_sweep']} ({r['max_batch_per_call']}) | {fmt(r['naive_power_s'])} | {fmt(r['liplt_power_s'])} | "
                   f"{fmt(r['rows_s'])} | {fmt(r['naive_s'])} | {fmt(r.get('liplt_s'))} | {fmt(r.get('exact_spans'))} | "
                   f"{fmt(r['naive_pair_mean'], 4)} | {fmt(r.get('liplt_pair_mean'), 4)} |")
    if deep:
        out += ["", "| MLP depth L (width %s) | hidden spans | layer calls / sweep | naive-power step s | liplt-power step s | ratio |"
                % deep[0].get("width", ""), "|---:|---:|---:|---:|---:|---:|"]
        for r in deep:
            out.append(f"| {r['depth']} | {r['hidden_spans']} | {r['calls_per_sweep']} | {fmt(r['naive_power_s'])} | "
                       f"{fmt(r['liplt_power_s'])} | {r['liplt_power_s'] / r['naive_power_s']:.2f} |")
    return "\n".join(out)


def write_markdown(path: Path, body: str) -> None:
    write_section(path, SECTION, body, "# Benchmarks\n\nEach section: what was measured, the exact command, the machine, the date, the numbers.\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--width", type=float, default=1.0, help="channel / width multiplier (1 = the paper's nets)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--madds", type=float, default=2e10, help="budget of multiply-adds per materialised span")
    ap.add_argument("--no-upper", action="store_true", help="skip the provable LipLT bound")
    ap.add_argument("--no-upper-for", nargs="*", default=[], choices=list(NETS), help="skip it for these nets only")
    ap.add_argument("--depths", type=int, nargs="*", default=[2, 4, 8, 16], help="MLP depths for the scaling table")
    ap.add_argument("--mlp-width", type=int, default=256)
    ap.add_argument("--markdown", help="write the 'Bounds' section of this markdown file")
    ap.add_argument("--note", default="", help="free text added to the markdown section")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    device = "cpu"
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load {os.getloadavg()[0]:.1f}; GPU: {'yes' if torch.cuda.is_available() else 'none'}")
    rows = []
    for name in args.nets:
        r = bench_net(name, args.width, args.repeats, args.madds, not (args.no_upper or name in args.no_upper_for))
        rows.append(r)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    deep = []
    for d in args.depths:
        r = bench_depth(d, args.mlp_width, args.repeats)
        r["width"] = args.mlp_width
        deep.append(r)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    table = tables(rows, deep)
    print(table)
    if args.markdown:
        cmd = "python benchmarks/bench_bounds.py " + " ".join(sys.argv[1:] if argv is None else argv)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        body = "\n".join([
            SECTION, "",
            f"**Machine.** `lscpu`: \"{cpu_model()}\", {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {device}; load average at the start {os.getloadavg()[0]:.1f}. "
            "No GPU was available: the GPU column is not measured.",
            "", f"**Date.** {now}", "", f"**Command.** `{cmd}`", "",
            "Training-step columns: median of the repeats after one warm-up, forward + backward of the bound "
            "alone (no data batch). Provable bounds: one run, float64. 'layer calls / sweep': sequential "
            "layer calls of one batched sweep over all hidden spans (the O(L) of Fazlyab23 §3.1), with the "
            "largest batch of vectors one call carries.",
            "", args.note, "", table, "",
        ])
        write_markdown(Path(args.markdown), body)
        print(f"wrote section to {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
