"""Certificates: per-sample certified radii, certified accuracy at eps, results files."""

from .dispatch import CERTIFIERS, METHODS, certify, methods, register_certifier
from .ensemble import ensemble
from .l2 import BOUND_CHOICES as L2_BOUNDS
from .l2 import lipschitz_l2
from .evaluate import Evaluation, eps_key, evaluate, evaluate_samples, format_results, summarize, write_radii
from .hybrid import hybrid
from .interval import best, interval
from .margin import margin
from .result import BOUND_KINDS, Certificate, CertificationError

from .pairwise import PAIRWISE_CHOICES, l2_certify, pairwise_l2

# l2 models: pairwise bounds (004: naive / liplt / liplt-estimate) or, for every other bound name,
# the Lipschitz-constant certificate of 003 (l2_certify hands those to lipschitz_l2).
register_certifier("l2_lipschitz", l2_certify)

__all__ = [
    "BOUND_KINDS",
    "CERTIFIERS",
    "Certificate",
    "CertificationError",
    "Evaluation",
    "L2_BOUNDS",
    "METHODS",
    "best",
    "certify",
    "ensemble",
    "eps_key",
    "evaluate",
    "evaluate_samples",
    "format_results",
    "hybrid",
    "interval",
    "lipschitz_l2",
    "margin",
    "methods",
    "register_certifier",
    "summarize",
    "write_radii",
]
