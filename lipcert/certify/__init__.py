"""Certificates: per-sample certified radii, certified accuracy at eps, results files."""

from .dispatch import CERTIFIERS, certify, register_certifier
from .evaluate import Evaluation, eps_key, evaluate, evaluate_samples, format_results, summarize, write_radii
from .margin import margin
from .result import BOUND_KINDS, Certificate, CertificationError

__all__ = [
    "BOUND_KINDS",
    "CERTIFIERS",
    "Certificate",
    "CertificationError",
    "Evaluation",
    "certify",
    "eps_key",
    "evaluate",
    "evaluate_samples",
    "format_results",
    "margin",
    "register_certifier",
    "summarize",
    "write_radii",
]
