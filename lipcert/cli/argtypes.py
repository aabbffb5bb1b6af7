"""argparse value types shared by the subcommands: a bad number is a usage error, not a traceback."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def radius(text: str) -> float:
    """A perturbation radius: a float >= 0 (``inf`` allowed), never NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a radius must be a number >= 0")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (sample counts, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def output_file(text: str) -> str:
    """A file to write results to, checked before any work is done (not after a long certification)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name inside it")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r}: {parent} {what}; create it first or write elsewhere")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: {parent} is not writable; write elsewhere")
    return text
