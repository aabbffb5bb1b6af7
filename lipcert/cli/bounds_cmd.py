"""``lipcert bounds CHECKPOINT``: every Lipschitz bound the model supports, with the time each took.

Scalar bounds (e.g. ``global``) are printed and written under their name; per-sample bounds
(e.g. ``local``, on the l2 ball of radius ``--eps`` around each sample) as ``<name>_mean``,
``_median`` and ``_max``, and one column each in ``--per-sample FILE.csv``. Every bound is
labelled exact / upper (provable) / estimate (power iteration, not a proof).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys

from .argtypes import DATA_HELP, data_spec, output_file, positive_int, radius, resolve_data
from .models_check import add_integrity_option
from .options_check import warn_ignored_data_dir


def add_parser(sub) -> None:
    p = sub.add_parser("bounds", help="Lipschitz bounds of a checkpoint (global, local, ...) with timings", description=__doc__)
    p.add_argument("checkpoint", help="model.pt or last.pt of a run")
    p.add_argument("--eps", type=radius, help="radius of the ball for local bounds (default: the run's first eval eps)")
    p.add_argument("--bounds", nargs="+", metavar="NAME", help="only these bounds (default: all that apply)")
    p.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data", type=data_spec, metavar="KIND:PATH", help=DATA_HELP + " (default: the training data)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="dataset split (default test)")
    p.add_argument("--data-dir", help="directory holding the dataset files")
    p.add_argument("--limit", type=positive_int, help="only the first N samples of the split")
    p.add_argument("--batch-size", type=positive_int, default=200, help="samples per batch (default 200)")
    p.add_argument("--local-iters", type=int, default=2000, help="max power iterations of local estimates (Huang21: 2000)")
    p.add_argument("--local-tol", type=float, default=1e-3, help="power-iteration tolerance of local estimates (Huang21: 1e-3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--json", type=output_file, help="write the bounds (and timings) to this JSON file")
    p.add_argument("--per-sample", type=output_file, help="write per-sample bounds to this CSV (index,label,<bound>...)")
    add_integrity_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import checkpoint, data
    from ..bounds import BOUNDS, BoundContext, bounds_summary, compute_bounds
    from ..train import resolve_device

    device = resolve_device(args.device)
    payload = checkpoint.read(args.checkpoint, verify=not args.ignore_corruption)
    cfg = payload.get("config") or {}
    name, data_dir, options = resolve_data(args, cfg.get("data"))
    eps = args.eps
    if eps is None:
        eval_eps = (cfg.get("eval") or {}).get("eps") or []
        if not eval_eps:
            raise ValueError(f"{args.checkpoint} records no eval eps; pass --eps E (radius of the local ball)")
        eps = float(eval_eps[0])
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"--eps must be finite and >= 0, got {eps}")
    if args.bounds:
        unknown = sorted(set(args.bounds) - set(BOUNDS))
        if unknown:
            raise ValueError(f"unknown bound(s) {unknown}; available: {', '.join(sorted(BOUNDS))}")
    warn_ignored_data_dir(name, args.data_dir)
    model = checkpoint.load_model(args.checkpoint, map_location=device, verify=not args.ignore_corruption)
    applicable = [n for n, s in BOUNDS.items() if s.applies(model)]
    if not applicable:
        raise ValueError(f"{type(model).__name__} supports none of the registered bounds ({', '.join(sorted(BOUNDS))}): "
                         "they are l2 Lipschitz bounds of ordinary networks (Huang21, Fazlyab23). An l-inf-dist net is 1-Lipschitz "
                         "in l-inf by construction; certify it with `lipcert certify`, or estimate its empirical "
                         "constant with `lipcert report RUN_DIR --lipschitz N`")
    x, y = data.load(name, args.split, data_dir=data_dir, **options)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    ctx = BoundContext(model, x.to(device), y.to(device), eps, args.batch_size,
                       options={"local_iters": args.local_iters, "local_tol": args.local_tol})
    names = args.bounds or applicable
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    progress(f"computing {len(names)} bound(s) on {int(y.numel())} samples: {', '.join(names)}")
    values = compute_bounds(ctx, names, log=lambda line: progress(f"  done {line}"))
    summary = {"dataset": name, "split": args.split, "n": int(y.numel()), "eps": eps, **bounds_summary(values)}
    width = max(len(v.name) for v in values)
    print(f"{name} {args.split} n={summary['n']}  eps={eps:g} (local bounds hold on the l2 ball of this radius)")
    for v in values:
        if v.per_sample:
            t = v.value
            print(f"{v.name:<{width}}  mean {summary[v.name + '_mean']:.6g}  median {summary[v.name + '_median']:.6g}  "
                  f"max {summary[v.name + '_max']:.6g}  [{v.kind}]  {v.seconds:.2f} s  ({int(t.numel())} samples)")
        else:
            print(f"{v.name:<{width}}  {v.value:.6g}  [{v.kind}]  {v.seconds:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    if args.per_sample:
        per = [v for v in values if v.per_sample]
        with open(args.per_sample, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "label", *[v.name for v in per]])
            for i, lab in enumerate(y.tolist()):
                w.writerow([i, lab, *[repr(float(v.value[i])) for v in per]])
    return 0
