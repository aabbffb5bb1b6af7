"""Checkpoints: atomic writes, weights-only reads (loading never executes code from a file).

A checkpoint is a dict of tensors and plain data saved with ``torch.save`` and read with
``torch.load(weights_only=True)``. It names its model by registry name + keyword arguments, so
``lipcert.load`` rebuilds the architecture from lipcert's own code and only takes numbers from
the file.

Integrity: :func:`save_atomic` stores ``content_hash``, a sha256 digest over every tensor in the
payload (path of keys, dtype, shape, bytes; in sorted key order) plus the model spec, p and kind;
:func:`read` recomputes it and refuses a file whose tensors changed (:class:`CheckpointCorruptError`,
naming them) unless called with ``verify=False`` (CLI: ``--ignore-corruption``). A file written
before hashes existed loads with a :class:`CheckpointWarning`. Cost: one sha256 pass over the
tensors at save and at load (about 0.2-0.6 s per 100 MB on one CPU core). :func:`load_model` also loads the
weights strictly into the rebuilt model and refuses non-finite weights in an evaluation model
(``model.pt``); a training state (``last.pt``) with non-finite weights loads with a warning so a
diverged run can be inspected (certificates of such a model certify nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import build
from .nn import current_p, set_p

FORMAT = "lipcert-checkpoint"
VERSION = 1


#: key of the integrity record in a checkpoint
HASH_KEY = "content_hash"
#: non-tensor entries the digest covers besides every tensor (they decide how the tensors are used)
HASHED_FIELDS = ("model_spec", "lp_exponent", "kind")


class CheckpointError(ValueError):
    """A file that is not a readable lipcert checkpoint."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint whose tensors no longer match the content hash written with them."""


class CheckpointWarning(UserWarning):
    """A checkpoint that loads but cannot be fully checked (no content hash, non-finite weights)."""


def _tensors(obj: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts / lists / tuples, with its key path, in sorted key order."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    out: list[tuple[str, torch.Tensor]] = []
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            if path == "" and key == HASH_KEY:
                continue
            out += _tensors(obj[key], f"{path}/{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            out += _tensors(item, f"{path}/{i}")
    return out


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (in C order, on the CPU)."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel():
        h.update(flat.view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


def _fields_digest(payload: dict[str, Any]) -> str:
    fields = {k: payload.get(k) for k in HASHED_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=repr).encode()).hexdigest()


def content_hash(payload: dict[str, Any]) -> dict[str, Any]:
    """The integrity record of a payload: per-tensor digests, the digest of the model spec / p /
    kind, and one sha256 over all of them (``digest``)."""
    tensors = {name: tensor_digest(t) for name, t in _tensors(payload)}
    fields = _fields_digest(payload)
    total = hashlib.sha256(fields.encode())
    for name in sorted(tensors):
        total.update(f"|{name}={tensors[name]}".encode())
    return {"algorithm": "sha256", "digest": total.hexdigest(), "fields": fields, "tensors": tensors}


def verify_content(payload: dict[str, Any], path: str | Path = "checkpoint") -> str | None:
    """Check ``payload`` against its stored hash: returns None when it matches, a sentence saying
    what differs when it does not; warns (and returns None) when there is no hash to check."""
    stored = payload.get(HASH_KEY)
    if stored is None:
        warnings.warn(f"{path} has no content hash (written by lipcert before integrity checks); its tensors "
                      "cannot be checked for corruption. Re-save it with a current lipcert to add one",
                      CheckpointWarning, stacklevel=3)
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("tensors"), dict):
        return "its content-hash record is unreadable"
    now = content_hash(payload)
    if now["digest"] == stored.get("digest"):
        return None
    problems = []
    if now["fields"] != stored.get("fields"):
        problems.append(f"the model spec / p / kind ({', '.join(HASHED_FIELDS)}) changed")
    old, new = stored["tensors"], now["tensors"]
    changed = sorted(n for n in new if n in old and new[n] != old[n])
    missing, extra = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    for label, names in (("tensors changed", changed), ("tensors missing", missing), ("unexpected tensors", extra)):
        if names:
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            problems.append(f"{label}: {shown}")
    return "; ".join(problems) or "the overall digest differs"


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write ``payload`` to ``path`` so that a crash leaves either the old or the new file.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX); the directory is fsync'ed too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        full = {"format": FORMAT, "version": VERSION, **payload}
        full[HASH_KEY] = content_hash(full)
        with os.fdopen(fd, "wb") as f:
            torch.save(full, f)
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


def read(path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; clear errors for missing/corrupt files.

    ``verify`` (default) recomputes the content hash and raises :class:`CheckpointCorruptError`
    when a tensor changed since it was saved; ``verify=False`` only warns.
    """
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
    problem = verify_content(payload, path)
    if problem is not None:
        message = (f"{path} is corrupted: its contents no longer match the content hash written with it ({problem}). "
                   "Re-copy or re-train it; to load it anyway pass verify=False (CLI: --ignore-corruption)")
        if verify:
            raise CheckpointCorruptError(message)
        warnings.warn(message.split(". Re-copy")[0] + "; loading it anyway (verify=False)", CheckpointWarning, stacklevel=2)
    return payload


def model_payload(model: nn.Module, **meta: Any) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds a model: registry spec, weights and p."""
    spec = getattr(model, "lipcert_spec", None)
    if spec is None:
        raise CheckpointError("model was not built by lipcert.models.build, so it cannot be saved as a spec")
    return {"model_spec": spec, "model": model.state_dict(), "lp_exponent": current_p(model), **meta}


def non_finite(state: dict[str, Any]) -> list[str]:
    """Names of the floating tensors of a state dict that hold NaN or inf."""
    return [k for k, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_model(path: str | Path, map_location: str | torch.device = "cpu", use_ema: bool = True,
               verify: bool = True) -> nn.Module:
    """Rebuild the model stored in a checkpoint, in eval mode.

    For a training-state checkpoint the EMA weights are used when present (``use_ema``), as in
    every evaluation lipcert does. The weights must fit the rebuilt model exactly (strict load)
    and, in an evaluation model (``model.pt``), be finite; ``verify`` as in :func:`read`.
    """
    payload = read(path, map_location, verify=verify)
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
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no weights (its 'model' entry is {type(state).__name__})")
    bad = non_finite(state)
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        if payload.get("kind") == "train_state":
            warnings.warn(f"{path}: non-finite (NaN / inf) weights in {shown}: the training run diverged; nothing "
                          "computed from this model is meaningful", CheckpointWarning, stacklevel=2)
        else:
            raise CheckpointError(f"{path}: non-finite (NaN / inf) weights in {shown}; this model cannot be evaluated "
                                  "or certified. Re-train (lower optim.lr) or use another checkpoint")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model {spec['name']!r}: {str(err).splitlines()[0]}") from None
    p = payload.get("lp_exponent")
    if p is not None:
        set_p(model, float(p))
    return model.to(map_location).eval()
