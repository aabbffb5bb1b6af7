"""``lipcert presets``: list the shipped presets with their descriptions."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list the shipped presets", description=__doc__)
    p.add_argument("name", nargs="?", help="print this preset's full YAML")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..config import dump, load_preset, preset_names

    if args.name:
        print(dump(load_preset(args.name)), end="")
        return 0
    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        cfg = load_preset(name)
        print(f"{name:<{width}}  {cfg.data.name:<14} {cfg.description}")
    return 0
