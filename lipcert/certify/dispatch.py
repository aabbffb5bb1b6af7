"""Pick the certificate a model supports (``model.certificate``) and compute it."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .margin import margin
from .result import Certificate, CertificationError

CERTIFIERS: dict[str, Callable[..., Certificate]] = {"linf_margin": margin}


def register_certifier(kind: str, fn: Callable[..., Certificate]) -> None:
    """Make ``certify`` handle models whose ``certificate`` attribute is ``kind``."""
    CERTIFIERS[kind] = fn


def certify(model: nn.Module, x: Tensor, y: Tensor, **kwargs) -> Certificate:
    """Certified radii of ``model`` on (x, y) with the certificate its class declares."""
    kind = getattr(model, "certificate", None)
    if kind not in CERTIFIERS:
        raise CertificationError(
            f"{type(model).__name__} declares no certificate lipcert knows (certificate={kind!r}); "
            f"known: {sorted(CERTIFIERS)}"
        )
    return CERTIFIERS[kind](model, x, y, **kwargs)
