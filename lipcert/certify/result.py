"""Per-sample certificates and what they mean."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

#: How much a certificate can be trusted (printed next to every number).
BOUND_KINDS = {
    "exact": "exact Lipschitz constant (sound)",
    "upper": "provable upper bound (sound)",
    "estimate": "estimate, as in the paper (NOT a proof)",
}

#: ``extra["bound_source"]`` of l2 certificates: what each sample's radius rests on, by code.
BOUND_SOURCES = {
    0: "none",
    1: "global (upper)",
    2: "local (upper)",
    3: "local (estimate)",
    4: "pairwise naive (upper)",
    5: "liplt (upper)",
    6: "liplt (estimate)",
    7: "bcp ball and box (upper; inputs in [0, 1])",
    8: "liplt per-class (upper)",
}
#: The code of each l2 bound name's radii in ``extra["bound_source"]`` (0: no radius).
SOURCE_CODES = {"global": 1, "local-upper": 2, "local": 3, "naive": 4, "liplt": 5, "liplt-estimate": 6,
                "bcp": 7, "liplt-per-class": 8}


class CertificationError(ValueError):
    """The model cannot be certified as it is (wrong mode, wrong norm, non-finite input ...)."""


@dataclass
class Certificate:
    """Certified radii for a batch of samples, in raw input units.

    ``radius[i] > eps`` means: every input within ``eps`` of ``x[i]`` (in ``norm``) is classified
    as ``label[i]`` (for the BCP certificate, method ``"l2_bcp"``: every such input in the pixel
    range [0, 1]). The radius is 0 for misclassified samples.
    """

    radius: Tensor  # (N,) float64, raw input units
    prediction: Tensor  # (N,) int64
    label: Tensor  # (N,) int64
    norm: str  # "linf" or "l2"
    method: str  # e.g. "linf_margin", "hybrid_interval", "l2_global"
    bound: str = "exact"  # key of BOUND_KINDS
    extra: dict[str, Tensor] = field(default_factory=dict)

    def certified(self, eps: float) -> Tensor:
        """Boolean mask of samples certified at ``eps`` (strict: radius > eps)."""
        if not eps >= 0:  # also NaN; a negative eps would count misclassified samples (radius 0)
            raise ValueError(f"eps must be a number >= 0, got {eps}")
        return self.radius > eps

    def certified_accuracy(self, eps: float) -> float:
        return self.certified(eps).double().mean().item() if self.radius.numel() else float("nan")

    def clean_accuracy(self) -> float:
        return (self.prediction == self.label).double().mean().item() if self.label.numel() else float("nan")

    @staticmethod
    def cat(parts: list["Certificate"]) -> "Certificate":
        """Concatenate batch certificates (same norm/method/bound)."""
        first = parts[0]
        extra = {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra}
        return Certificate(
            radius=torch.cat([p.radius for p in parts]),
            prediction=torch.cat([p.prediction for p in parts]),
            label=torch.cat([p.label for p in parts]),
            norm=first.norm,
            method=first.method,
            bound=max((p.bound for p in parts), key=list(BOUND_KINDS).index),  # the weakest
            extra=extra,
        )
