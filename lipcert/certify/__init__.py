"""Certificates: per-sample certified radii, certified accuracy at eps, results files."""

from .dispatch import CERTIFIERS, METHODS, certify, methods, register_certifier
from .ensemble import ensemble
from .evaluate import Evaluation, eps_key, evaluate, evaluate_samples, format_results, summarize, write_radii
from .hybrid import hybrid
from .interval import best, interval
from .margin import margin
from .result import BOUND_KINDS, Certificate, CertificationError

__all__ = [
    "BOUND_KINDS",
    "CERTIFIERS",
    "Certificate",
    "CertificationError",
    "Evaluation",
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
    "margin",
    "methods",
    "register_certifier",
    "summarize",
    "write_radii",
]
