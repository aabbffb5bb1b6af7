"""argparse value types shared by the subcommands: a bad number is a usage error, not a traceback."""

from __future__ import annotations

import argparse
import math


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
