"""Checkpoints: atomic writes, weights-only reads (loading never executes code from a file).

A checkpoint is a dict of tensors and plain data saved with ``torch.save`` and read with
``torch.load(weights_only=True)``. It names its model by registry name + keyword arguments, so
``lipcert.load`` rebuilds the architecture from lipcert's own code and only takes numbers from
the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import build
from .nn import current_p, set_p

FORMAT = "lipcert-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable lipcert checkpoint."""


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` so that a crash leaves either the old or the new file.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX); the directory is fsync'ed too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for missing/corrupt files."""
    path = Path(path)
    if path.is_dir():
        hint = " (a run directory: pass DIR/model.pt or DIR/last.pt)" if (path / "model.pt").is_file() else ""
        raise CheckpointError(f"checkpoint {path} is a directory, not a file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    # A file that is not a torch zip archive goes to the legacy unpickler, which fails with
    # KeyError / IndexError / ... on arbitrary bytes: all mean "not a checkpoint".
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, AttributeError, TypeError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, (KeyError, IndexError, AttributeError, TypeError, UnicodeDecodeError)):
            first = "not a file written by torch.save"
        raise CheckpointError(
            f"{path} is not a readable lipcert checkpoint (truncated, corrupt, or it contains "
            f"objects other than tensors and plain data, which lipcert refuses to load): {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lipcert checkpoint (no '{FORMAT}' header)")
    if int(payload.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer lipcert (format {payload['version']} > {VERSION}); upgrade lipcert")
    return payload


def model_payload(model: nn.Module, **meta: Any) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds a model: registry spec, weights and p."""
    spec = getattr(model, "lipcert_spec", None)
    if spec is None:
        raise CheckpointError("model was not built by lipcert.models.build, so it cannot be saved as a spec")
    return {"model_spec": spec, "model": model.state_dict(), "lp_exponent": current_p(model), **meta}


def load_model(path: str | Path, map_location: str | torch.device = "cpu", use_ema: bool = True) -> nn.Module:
    """Rebuild the model stored in a checkpoint, in eval mode.

    For a training-state checkpoint the EMA weights are used when present (``use_ema``), as in
    every evaluation lipcert does.
    """
    payload = read(path, map_location)
    spec = payload.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{path} has no model spec")
    try:
        model = build(spec["name"], **spec.get("kwargs", {}))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot rebuild model {spec['name']!r}: {err}") from None
    state = payload["model"]
    if use_ema and isinstance(payload.get("ema"), dict):
        state = payload["ema"]["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model {spec['name']!r}: {str(err).splitlines()[0]}") from None
    p = payload.get("lp_exponent")
    if p is not None:
        set_p(model, float(p))
    return model.to(map_location).eval()
