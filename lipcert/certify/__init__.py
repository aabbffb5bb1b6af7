"""Certificates: per-sample certified radii, certified accuracy at eps, results files."""

from .dispatch import CERTIFIERS, METHODS, bound_names, certify, method_names, methods, norm_of, register_certifier
from .driver import Certifier
from .ensemble import ensemble
from .evaluate import Evaluation, eps_key, evaluate, evaluate_samples, evaluation_summary, format_results, write_radii
from .hybrid import hybrid
from .interval import best, interval
from .l2 import BOUND_CHOICES as L2_BOUNDS
from .l2 import lipschitz_l2
from .l2_certifier import l2_certify
from .margin import margin
from .pairwise import PAIRWISE_CHOICES, pairwise_l2
from .result import BOUND_KINDS, BOUND_SOURCES, Certificate, CertificationError
from .voting import voting, voting_radius

__all__ = [
    "BOUND_KINDS",
    "BOUND_SOURCES",
    "CERTIFIERS",
    "Certificate",
    "Certifier",
    "CertificationError",
    "Evaluation",
    "L2_BOUNDS",
    "METHODS",
    "best",
    "bound_names",
    "certify",
    "ensemble",
    "eps_key",
    "evaluate",
    "evaluate_samples",
    "evaluation_summary",
    "format_results",
    "hybrid",
    "interval",
    "lipschitz_l2",
    "margin",
    "method_names",
    "methods",
    "norm_of",
    "register_certifier",
    "voting",
    "voting_radius",
    "write_radii",
]
