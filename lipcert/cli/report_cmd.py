"""``lipcert report RUN_DIR``: markdown table + certified-accuracy-vs-radius plot."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write report.md and plots for a run", description=__doc__)
    p.add_argument("run_dir", help="a run directory (holds results.json, radii.csv, metrics.jsonl)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..report import make_report

    out = make_report(args.run_dir)
    print(out.read_text(), end="")
    print(f"\nwritten: {out}")
    return 0
