"""Pick the certificate a model supports (``model.certificate``) and compute it."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor, nn

from .margin import margin
from .result import Certificate, CertificationError

CERTIFIERS: dict[str, Callable[..., Certificate]] = {"linf_margin": margin}
#: the norm of every certificate kind
NORMS = {"linf_margin": "linf", "linf_hybrid": "linf", "linf_ensemble": "linf", "l2_lipschitz": "l2"}
#: Alternative certificates per model kind, by method name (e.g. "interval", "best").
METHODS: dict[str, dict[str, Callable[..., Certificate]]] = {}


#: The cheapest sound certificate per kind (``certify(..., method="fast")``, e.g. for per-epoch
#: evaluations during training); kinds without one use their default.
FAST: dict[str, Callable[..., Certificate]] = {}


def register_certifier(kind: str, fn: Callable[..., Certificate], method: str | None = None, fast: bool = False) -> None:
    """Make ``certify`` handle models whose ``certificate`` attribute is ``kind``.

    Without ``method`` ``fn`` becomes the kind's default (by convention the best sound certificate
    the kind has); with it, ``fn`` is the alternative picked by ``certify(..., method=method)``.
    ``fast=True`` also makes it the kind's ``method="fast"`` certificate.
    """
    if method is None:
        CERTIFIERS[kind] = fn
    else:
        METHODS.setdefault(kind, {})[method] = fn
    if fast:
        FAST[kind] = fn


def methods(model: nn.Module) -> list[str]:
    """Names of the alternative certificates available for ``model`` (besides its default)."""
    return sorted(METHODS.get(getattr(model, "certificate", None), {}))


def certify(model: nn.Module, x: Tensor, y: Tensor, method: str | None = None, norm: str | None = None,
            **kwargs) -> Certificate:
    """Certified radii of ``model`` on (x, y) with the certificate its class declares.

    ``norm`` ("linf" / "l2") must match the model's certificate when given. A plain torch model
    (one lipcert did not build: no ``certificate``) is certified in l2 with ``norm="l2"``: it is
    read as a chain of supported layers (:func:`lipcert.certify.plain.as_l2_model`), every l2
    ``bound`` applies (default "best": the best sound bound per sample).

    The default is the kind's best sound certificate; ``method`` picks an alternative registered for
    that kind (e.g. ``"margin"`` or ``"interval"`` for l-inf-dist nets), ``"fast"`` the cheapest one.
    ``eps`` (the radii of interest) is passed only to certifiers that take it (e.g.
    the l2 local bound, which is computed on a ball of that radius, or the interval certificate,
    which then checks only those radii); others ignore it.
    """
    if norm not in (None, "linf", "l2"):
        raise CertificationError(f"unknown norm {norm!r}; use 'linf' or 'l2'")
    kind = getattr(model, "certificate", None)
    if kind is None and norm == "l2":
        from .plain import as_l2_model, check_same_outputs

        if not isinstance(x, Tensor) or x.dim() < 2:
            raise CertificationError("x must be a batch of inputs (N, C, H, W)")
        net = as_l2_model(model, tuple(x.shape[1:]))
        check_same_outputs(model, net, x[:64].to(next(iter(net.parameters())).device))
        model, kind = net, net.certificate
    if kind not in CERTIFIERS:
        hint = " (a plain torch model: certify(model, x, y, norm='l2') reads it as an l2 network)" if kind is None else ""
        raise CertificationError(
            f"{type(model).__name__} declares no certificate lipcert knows (certificate={kind!r}); "
            f"known: {sorted(CERTIFIERS)}{hint}"
        )
    if norm is not None and NORMS.get(kind, norm) != norm:
        raise CertificationError(f"{type(model).__name__} is certified in {NORMS[kind]} ({kind}), not in {norm}")
    if method in (None, "auto", "default"):
        fn = CERTIFIERS[kind]
    elif method == "fast":
        fn = FAST.get(kind, CERTIFIERS[kind])
    else:
        options = METHODS.get(kind, {})
        if method not in options:
            raise CertificationError(f"no certificate method {method!r} for {kind} models; available: {sorted(options) or ['default']}")
        fn = options[method]
    if "eps" in kwargs and "eps" not in inspect.signature(fn).parameters:
        kwargs.pop("eps")
    return fn(model, x, y, **kwargs)
