"""Attacks: PGD in l-inf and l2 for the PGD-accuracy column and the soundness tests."""

from .pgd import AttackResult, pgd

__all__ = ["AttackResult", "pgd"]
