"""Pick the certificate a model supports (``model.certificate``) and compute it."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor, nn

from .margin import margin
from .result import Certificate, CertificationError

CERTIFIERS: dict[str, Callable[..., Certificate]] = {"linf_margin": margin}


def register_certifier(kind: str, fn: Callable[..., Certificate]) -> None:
    """Make ``certify`` handle models whose ``certificate`` attribute is ``kind``."""
    CERTIFIERS[kind] = fn


def certify(model: nn.Module, x: Tensor, y: Tensor, **kwargs) -> Certificate:
    """Certified radii of ``model`` on (x, y) with the certificate its class declares.

    ``eps`` (the radii of interest) is passed only to certifiers that take it (e.g. the l2 local
    bound, which is computed on a ball of that radius); others ignore it.
    """
    kind = getattr(model, "certificate", None)
    if kind not in CERTIFIERS:
        raise CertificationError(
            f"{type(model).__name__} declares no certificate lipcert knows (certificate={kind!r}); "
            f"known: {sorted(CERTIFIERS)}"
        )
    fn = CERTIFIERS[kind]
    if "eps" in kwargs and "eps" not in inspect.signature(fn).parameters:
        kwargs.pop("eps")
    return fn(model, x, y, **kwargs)
