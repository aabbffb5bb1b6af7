"""The registry of certificates: which :class:`~lipcert.certify.driver.Certifier` each model kind
(``model.certificate``) has, by method name, and :func:`certify`, which picks and runs one.

The registry is also where the names users type come from: :func:`method_names`,
:func:`bound_names` and :func:`norm_of` (the CLI builds its ``--method`` / ``--bound`` checks and
norms from them).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .driver import Certifier
from .result import Certificate, CertificationError

#: The default certifier of every kind (by convention its best sound certificate).
CERTIFIERS: dict[str, Certifier] = {}
#: Alternative certificates per model kind, by method name (e.g. "interval", "best").
METHODS: dict[str, dict[str, Certifier]] = {}
#: The cheapest sound certificate per kind (``certify(..., method="fast")``, e.g. for per-epoch
#: evaluations during training); kinds without one use their default.
FAST: dict[str, Certifier] = {}
#: The norm of every certificate kind (from its certifiers).
NORMS: dict[str, str] = {}


def register_certifier(kind: str, certifier: Certifier, method: str | None = None, fast: bool = False) -> None:
    """Make ``certify`` handle models whose ``certificate`` attribute is ``kind``.

    Without ``method`` ``certifier`` becomes the kind's default (by convention the best sound
    certificate the kind has); with it, the alternative picked by ``certify(..., method=method)``.
    ``fast=True`` also makes it the kind's ``method="fast"`` certificate. All certifiers of a kind
    certify in the same norm.
    """
    if not isinstance(certifier, Certifier):
        raise TypeError(f"register a lipcert.certify.driver.Certifier, not {type(certifier).__name__}")
    if NORMS.setdefault(kind, certifier.norm) != certifier.norm:
        raise ValueError(f"{kind} certificates are in {NORMS[kind]}; {certifier.name} is in {certifier.norm}")
    if method is None:
        CERTIFIERS[kind] = certifier
    else:
        METHODS.setdefault(kind, {})[method] = certifier
    if fast:
        FAST[kind] = certifier


def methods(model: nn.Module) -> list[str]:
    """Names of the alternative certificates available for ``model`` (besides its default)."""
    return method_names(getattr(model, "certificate", None))


def method_names(kind: str | None = None) -> list[str]:
    """Method names of the certificates of ``kind`` (None: of every kind), sorted."""
    kinds = list(METHODS) if kind is None else [kind]
    return sorted({name for k in kinds for name in METHODS.get(k, {})})


def bound_names(kind: str | None = None) -> list[str]:
    """Values the ``bound`` option takes for ``kind`` (None: for every kind), in registration order."""
    kinds = list(NORMS) if kind is None else [kind]
    found: dict[str, None] = {}
    for k in kinds:
        for c in [CERTIFIERS.get(k), *METHODS.get(k, {}).values()]:
            found.update(dict.fromkeys(c.bounds if c is not None else ()))
    return list(found)


def norm_of(kind: str | None) -> str | None:
    """``"linf"`` / ``"l2"``: the norm of a certificate kind (None if no certifier is registered)."""
    return NORMS.get(kind) if kind is not None else None


def certify(model: nn.Module, x: Tensor, y: Tensor, method: str | None = None, norm: str | None = None,
            progress: Callable[[str], None] | None = None, **kwargs) -> Certificate:
    """Certified radii of ``model`` on (x, y) with the certificate its class declares.

    ``norm`` ("linf" / "l2") must match the model's certificate when given. A plain torch model
    (one lipcert did not build: no ``certificate``) is certified in l2 with ``norm="l2"``: it is
    read as a chain of supported layers (:func:`lipcert.certify.plain.as_l2_model`), every l2
    ``bound`` applies (default "best": the best sound bound per sample).

    The default is the kind's best sound certificate; ``method`` picks an alternative registered for
    that kind (e.g. ``"margin"`` or ``"interval"`` for l-inf-dist nets), ``"fast"`` the cheapest one.
    ``eps`` (the radii of interest) is passed only to certifiers that take it (e.g.
    the l2 local bound, which is computed on a ball of that radius, or the interval certificate,
    which then checks only those radii); others ignore it. ``progress`` gets a line now and then
    during long runs.
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
    if norm is not None and NORMS[kind] != norm:
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
    if "eps" in kwargs and "eps" not in fn.options:
        kwargs.pop("eps")
    return fn(model, x, y, progress=progress, **kwargs)
