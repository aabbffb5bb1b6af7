"""``lipcert`` command line: one module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import bounds_cmd, certify_cmd, ensemble_cmd, export_cmd, presets_cmd, report_cmd, separation_cmd, train_cmd

COMMANDS = [train_cmd, certify_cmd, ensemble_cmd, bounds_cmd, report_cmd, export_cmd, presets_cmd, separation_cmd]


class _Parser(argparse.ArgumentParser):
    """Subcommand parser: options only by their full names (no prefix matching)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="lipcert",
        description="Certified adversarial robustness with Lipschitz networks (l-inf-dist nets, l2 Lipschitz bounds).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"lipcert {__version__}")
    # allow_abbrev=False everywhere: --data must never be read as --data-dir (or any other prefix)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for cmd in COMMANDS:
        cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lipcert`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("lipcert: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, RuntimeError) as err:
        if os.environ.get("LIPCERT_DEBUG"):
            raise
        print(f"lipcert {args.command}: error: {err}", file=sys.stderr)
        print("(set LIPCERT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 2
