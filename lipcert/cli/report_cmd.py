"""``lipcert report RUN_DIR``: markdown table + certified-accuracy-vs-radius plot."""

from __future__ import annotations

import argparse

from .models_check import add_integrity_option
from .options_check import warn


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.md and plots for a run", description=__doc__)
    p.add_argument("run_dir", help="a run directory (holds results.json, radii.csv, metrics.jsonl)")
    p.add_argument("--lipschitz", type=int, default=0, metavar="N",
                   help="add the empirical Lipschitz constant (Zhang22 App. C, PGD) of the final model on N test samples")
    p.add_argument("--lipschitz-p", type=float, nargs="+", metavar="P",
                   help="p values to evaluate it at (default: the run's first p, e.g. 8, and inf)")
    add_integrity_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import make_report

    if args.lipschitz_p and not args.lipschitz:
        warn("--lipschitz-p ignored: it chooses the p values of --lipschitz N, which was not given")

    out = make_report(args.run_dir, lipschitz_samples=args.lipschitz, lipschitz_p=args.lipschitz_p,
                      verify=not args.ignore_corruption)
    print(out.read_text(), end="")
    print(f"\nwritten: {out}")
    return 0
