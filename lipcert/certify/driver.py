"""One protocol for every certifier, and the one driver that runs them.

A :class:`Certifier` declares what it is -- its name, its norm, the options it takes (read from
its ``setup``'s keyword parameters) and, for l2, the names its ``bound`` option accepts -- and
how it works: ``check(model, x, **options)`` (optional) refuses models and inputs it cannot
certify before anything is copied; ``setup(model, model64, x, y, **options)`` reads the model once
(chains, bounds, precomputed Lipschitz constants) and returns the function that certifies one
batch, ``batch(xb, yb, rows) -> Certificate`` (``rows``: the batch's slice of ``x``, for
per-sample options such as a starting radius).

The driver, :func:`run`, does the rest once for all of them:

1. :func:`lipcert.certify.checks.check_inputs` (finite tensors, integer labels >= 0, the model's
   stored tensors and layer conditions), then the certifier's own ``check``;
2. a float64 copy of the model in eval mode (``model64``; certificates are computed in float64
   and never touch the caller's model). A certifier that also evaluates the model itself
   (``eval_model``: the l2 certificates' PGD pre-filter) runs with it in eval mode, every module's
   own mode restored afterwards;
3. batches of ``batch_size`` on the model's device, inputs in float64 unless the certifier asks
   for them as given (``float64_inputs=False``), labels as int64; a ``RuntimeError`` or
   ``IndexError`` while certifying a batch (e.g. inputs of the wrong shape) becomes a
   :class:`CertificationError` naming the batch's input shape;
4. the batch certificates concatenated (:meth:`Certificate.cat`), and a progress line about every
   ``PROGRESS_EVERY`` seconds for long runs;
5. one cache of rigorous per-operator norm bounds for the whole run
   (:func:`lipcert.bounds.norm_cache.shared_norms`): engines that read the same layers (Huang21's
   bounds and LipLT under ``--bound best``) compute each layer's bound once.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..bounds.norm_cache import shared_norms
from ..numerics import float64_copy
from .checks import check_inputs
from .result import Certificate, CertificationError

#: Seconds between two progress lines of one run.
PROGRESS_EVERY = 10.0

BatchFn = Callable[[Tensor, Tensor, slice], Certificate]


@dataclass(frozen=True)
class Certifier:
    """A certificate, as the registry (:mod:`lipcert.certify.dispatch`) and the driver see it."""

    name: str  # in errors and progress lines, e.g. "margin"
    norm: str  # "linf" or "l2"
    setup: Callable[..., BatchFn]  # setup(model, model64, x, y, **options) -> batch(xb, yb, rows)
    check: Callable[..., None] | None = None  # check(model, x, **options), before the float64 copy
    bounds: tuple[str, ...] = ()  # the values of its ``bound`` option (l2 certifiers)
    float64_inputs: bool = True  # batches reach ``batch`` in float64 (False: in the caller's dtype)
    eval_model: bool = False  # ``batch`` also evaluates the caller's model (in eval mode for the run)

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options it takes (besides ``batch_size`` and ``progress``)."""
        params = list(inspect.signature(self.setup).parameters.values())[4:]
        return tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD or p.kind is inspect.Parameter.KEYWORD_ONLY)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500,
                 progress: Callable[[str], None] | None = None, **options) -> Certificate:
        return run(self, model, x, y, batch_size=batch_size, progress=progress, **options)


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    if p is None:
        raise CertificationError(f"{type(model).__name__} has no parameters; there is nothing to certify")
    return p.device


def _check_options(certifier: Certifier, options: dict) -> None:
    unknown = sorted(set(options) - set(certifier.options))
    if unknown:
        raise TypeError(f"the {certifier.name} certificate takes no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(certifier.options) or '(none)'}")


def run(certifier: Certifier, model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500,
        progress: Callable[[str], None] | None = None, **options) -> Certificate:
    """Certify ``model`` on (x, y) with ``certifier`` (see the module docstring)."""
    _check_options(certifier, options)
    check_inputs(model, x, y)
    if certifier.check is not None:
        certifier.check(model, x, **options)
    with shared_norms():  # one rigorous norm bound per layer operator for the whole run
        return _run(certifier, model, x, y, batch_size, progress, options)


def _run(certifier: Certifier, model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
         progress: Callable[[str], None] | None, options: dict) -> Certificate:
    device = _device(model)
    model64 = float64_copy(model)
    batch = certifier.setup(model, model64, x, y, **options)
    modes = [(m, m.training) for m in model.modules()] if certifier.eval_model else []
    if certifier.eval_model:
        model.eval()
    parts: list[Certificate] = []
    n = x.shape[0]
    t0 = last = time.perf_counter()
    try:
        for s in range(0, n, batch_size):
            rows = slice(s, s + batch_size)
            xb = x[rows].to(device, torch.float64) if certifier.float64_inputs else x[rows].to(device)
            yb = y[rows].to(device).long()
            try:
                parts.append(batch(xb, yb, rows))
            except (RuntimeError, IndexError) as err:
                raise CertificationError(f"model could not be evaluated on inputs of shape {tuple(xb.shape)}: {err}") from None
            now = time.perf_counter()
            if progress is not None and now - last >= PROGRESS_EVERY and s + batch_size < n:
                progress(f"{certifier.name}: {s + batch_size}/{n} samples in {now - t0:.0f} s")
                last = now
    finally:
        for m, mode in modes:
            m.training = mode
    if not parts:
        raise CertificationError("no samples to certify")
    return Certificate.cat(parts)


def larger_radius(a: Certificate, b: Certificate, method: str, extra: dict[str, Tensor]) -> Certificate:
    """Per sample the larger radius of two sound certificates of the same samples (``a``'s
    predictions and labels; label "upper")."""
    return Certificate(radius=torch.maximum(a.radius, b.radius), prediction=a.prediction, label=a.label, norm=a.norm,
                       method=method, bound="upper", extra=extra)


__all__ = ["BatchFn", "Certifier", "larger_radius", "run"]
