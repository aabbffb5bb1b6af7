"""Options that have no effect for what the user chose: said, not silently ignored."""

from __future__ import annotations

import sys


def warn_ignored_data_dir(dataset: str | None, data_dir: str | None) -> None:
    """``--data-dir`` given for a dataset that ships with lipcert (digits, mnist5k, synthetic)."""
    if not data_dir or not dataset:
        return
    from ..data import DataError, info

    try:
        inf = info(dataset)
    except DataError:
        return  # an unknown name is reported by the loader, with the list of names
    if inf.embedded:
        print(f"lipcert: warning: --data-dir {data_dir} ignored: {inf.name} ships with the install "
              "(embedded dataset), nothing is read from disk", file=sys.stderr)


def warn(message: str) -> None:
    """One ``lipcert: warning: ...`` line on stderr."""
    print(f"lipcert: warning: {message}", file=sys.stderr)


def warn_ignored_raw(raw: bool, payload: dict, path: str) -> None:
    """``--raw`` for a checkpoint without separate EMA weights (model.pt, or a run without EMA)."""
    if raw and not isinstance(payload.get("ema"), dict):
        what = "an evaluation model (model.pt)" if payload.get("kind") == "model" else "a training state without EMA"
        warn(f"--raw ignored for {path}: it is {what}, which holds one set of weights")
