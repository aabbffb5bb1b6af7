"""Cost of one l2 training step relative to a plain cross-entropy step.

For each preset (default: the embedded l2 presets) it builds the preset's model and objective,
takes one batch of the preset's size from its dataset and times, interleaved in one run (so the
ratios compare timings taken seconds apart under the same machine load):

* ``ce``    -- forward + cross-entropy + backward of the same model on the same batch;
* ``ref``   -- one objective step (forward, bounds, loss, backward) with ``fast: false``
  (the reference path: ``LipschitzChain.propagate`` / ``local_sigmas``; the code before the fast path);
* ``fast``  -- the same step with ``fast: true`` (the default; ``lipcert.bounds.fast_local``).
  CRM objectives have no fast path: both columns time the same objective.

The scheduled values are the presets' final ones (eps at the end of its ramp, lambda = 1), and
CRM objectives run past their warm-up. ``6c2f-q`` (6C2F at quarter width on 3x32x32 random inputs,
batch 256, Local-Lip-B of the CIFAR-10 preset) covers the CIFAR net without the dataset. Before
timing, the loss of ``ref`` and ``fast`` from the same random state is compared (relative
difference printed). Each timing is the median over ``--repeats`` rounds after one warm-up
round; wall clock (``perf_counter``) and this process's CPU time (``process_time``, less
sensitive to other jobs on a shared machine) are both reported.

Example (CPU, a few minutes; one thread because the machine is shared)::

    OMP_NUM_THREADS=1 python benchmarks/bench_l2_step.py --repeats 7 --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import cpu_model, write_section  # noqa: E402  (benchmarks/machine.py: the script folder is on sys.path)

from lipcert import data, models  # noqa: E402
from lipcert.config import load_preset  # noqa: E402
from lipcert.train.loop import build_model  # noqa: E402
from lipcert.train.objectives import StepContext, build_objective  # noqa: E402

SECTION = "## l2 training step vs cross-entropy step (`benchmarks/bench_l2_step.py`)"
DEFAULT = ["mnist5k-l2-local", "digits-l2-local", "6c2f-q", "mnist5k-l2-crm", "digits-l2-crm"]


def setup(name: str, seed: int = 0):
    """(model, objective spec, x, y, StepContext values, epoch, description) for a preset name."""
    torch.manual_seed(seed)
    if name == "6c2f-q":
        cfg = load_preset("cifar10-l2-local-6c2f")
        kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
        model = models.build("6c2f", in_shape=(3, 32, 32), num_classes=10, **{**kwargs, "width": 0.25})
        x = torch.rand(256, 3, 32, 32)
        y = torch.randint(0, 10, (256,))
        values = {"eps": 36 / 255, "lam": 1.0}
        return model, dict(cfg.objective), x, y, values, 100.0, "6C2F/4 (CIFAR-10 preset's objective), random 3x32x32, batch 256"
    cfg = load_preset(name)
    info = data.info(cfg.data.name)
    model = build_model(cfg, info)
    x, y = data.load(cfg.data.name, "train")
    bs = cfg.train.batch_size
    x, y = x[:bs], y[:bs]
    values = {}
    for key, sched in (cfg.train.schedule or {}).items():
        if isinstance(sched, dict) and "end" in sched:
            values[key] = float(sched["end"])
    epoch = float(cfg.train.epochs) - 1
    width = cfg.model.get("width", 1.0)
    desc = f"{cfg.model['name'].upper()} width {width} {cfg.model.get('activation', '')}, {cfg.data.name}, batch {bs}"
    return model, dict(cfg.objective), x, y, values, epoch, desc


def bench(name: str, repeats: int) -> dict:
    model, spec, x, y, values, epoch, desc = setup(name)
    model.train()
    idx = torch.arange(x.shape[0])
    ctx = StepContext(values, idx, epoch)
    if spec.get("name") == "crm":  # no fast path: CRM's LipLT bound is batch-independent (see BENCHMARKS.md)
        one = build_objective(spec)
        objs = {False: one, True: one}
    else:
        objs = {f: build_objective({**spec, "fast": f}) for f in (False, True)}

    def ce() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def step(fast: bool):
        model.zero_grad(set_to_none=True)
        out = objs[fast](model, x, y, ctx)
        out.loss.backward()
        return float(out.loss.detach())

    losses = []
    for fast in (False, True):
        torch.manual_seed(1)
        losses.append(step(fast))
    rel = abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-30) if objs[False] is not objs[True] else None
    fns = {"ce": ce, "ref": lambda: step(False), "fast": lambda: step(True)}
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            if r:  # round 0 is the warm-up
                wall[k].append(w1 - w0)
                cpu[k].append(c1 - c0)
    row = {"name": name, "desc": desc, "objective": spec.get("name"), "loss_rel_diff": rel}
    for k in fns:
        row[f"{k}_wall"] = statistics.median(wall[k])
        row[f"{k}_cpu"] = statistics.median(cpu[k])
    for k in ("ref", "fast"):
        row[f"{k}_ratio_wall"] = row[f"{k}_wall"] / row["ce_wall"]
        row[f"{k}_ratio_cpu"] = row[f"{k}_cpu"] / row["ce_cpu"]
    return row


def table(rows: list[dict]) -> str:
    out = ["| preset | net, data, batch | objective | CE step ms (wall / cpu) | reference step ms | fast step ms | "
           "reference / CE (wall, cpu) | **fast / CE** (wall, cpu) | speed-up | loss rel. diff |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['desc']} | {r['objective']} | {1e3 * r['ce_wall']:.1f} / {1e3 * r['ce_cpu']:.1f} | "
            f"{1e3 * r['ref_wall']:.1f} / {1e3 * r['ref_cpu']:.1f} | {1e3 * r['fast_wall']:.1f} / {1e3 * r['fast_cpu']:.1f} | "
            f"{r['ref_ratio_wall']:.2f}x, {r['ref_ratio_cpu']:.2f}x | **{r['fast_ratio_wall']:.2f}x, {r['fast_ratio_cpu']:.2f}x** | "
            f"{r['ref_wall'] / r['fast_wall']:.2f}x | {'-' if r['loss_rel_diff'] is None else format(r['loss_rel_diff'], '.1e')} |"
        )
    return "\n".join(out)


def write_markdown(path: Path, body: str) -> None:
    write_section(path, SECTION, body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=DEFAULT, help="preset names (or 6c2f-q); default: %(default)s")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds per preset (after one warm-up round)")
    ap.add_argument("--markdown", help="replace (or append) this script's section of the given markdown file")
    ap.add_argument("--note", default="", help="free text added to the markdown section")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {load0:.1f}", flush=True)
    rows = []
    for name in args.presets:
        r = bench(name, args.repeats)
        rows.append(r)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    load1 = os.getloadavg()[0]
    body_table = table(rows)
    print(body_table)
    if args.markdown:
        cmd = "OMP_NUM_THREADS=%s python benchmarks/bench_l2_step.py %s" % (
            os.environ.get("OMP_NUM_THREADS", ""), shlex.join(sys.argv[1:] if argv is None else argv))
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        body = "\n".join([
            SECTION, "",
            f"**Machine.** `lscpu`: \"{cpu_model()}\", {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), CPU; load average {load0:.1f} at the start, {load1:.1f} at the end.",
            "", f"**Date.** {now}", "", f"**Command.** `{cmd}`", "",
            "One step = forward, bound, loss and backward on one batch of the preset's size, at the preset's final "
            "scheduled eps / lambda; CE = forward + cross-entropy + backward of the same model on the same batch. "
            "The three are timed round-robin in one run; medians over the rounds; ratios are within the run.",
            "", args.note, "", body_table, "",
        ])
        write_markdown(Path(args.markdown), body)
        print(f"wrote section to {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
