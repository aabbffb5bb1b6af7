"""Certificates: per-sample certified radii, certified accuracy at eps, results files."""

from .dispatch import CERTIFIERS, certify, register_certifier
from .evaluate import eps_key, evaluate, format_results, write_radii
from .margin import margin
from .result import BOUND_KINDS, Certificate, CertificationError

__all__ = [
    "BOUND_KINDS",
    "CERTIFIERS",
    "Certificate",
    "CertificationError",
    "certify",
    "eps_key",
    "evaluate",
    "format_results",
    "margin",
    "register_certifier",
    "write_radii",
]
