"""Certificates: per-sample certified radii, certified accuracy at eps, results files."""

from .dispatch import CERTIFIERS, METHODS, certify, methods, register_certifier
from .ensemble import ensemble
from .evaluate import eps_key, evaluate, format_results, write_radii
from .hybrid import hybrid
from .interval import best, interval
from .margin import margin
from .result import BOUND_KINDS, Certificate, CertificationError

__all__ = [
    "BOUND_KINDS",
    "CERTIFIERS",
    "Certificate",
    "CertificationError",
    "METHODS",
    "best",
    "certify",
    "ensemble",
    "eps_key",
    "evaluate",
    "format_results",
    "hybrid",
    "interval",
    "margin",
    "methods",
    "register_certifier",
    "write_radii",
]
