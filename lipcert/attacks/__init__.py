"""Attacks: PGD and APGD in l-inf and l2 for the empirical (attack) accuracy column and the
soundness tests; :mod:`.suite` runs a sequence of them as one worst case."""

from .apgd import apgd, dlr_loss
from .pgd import AttackResult, pgd
from .suite import DEFAULT_SPEC, SuiteResult, attack_names, describe, run_attacks

__all__ = ["AttackResult", "DEFAULT_SPEC", "SuiteResult", "apgd", "attack_names", "describe", "dlr_loss", "pgd", "run_attacks"]
