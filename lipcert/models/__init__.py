"""Architectures by name: ``lipcert.models.build(name, **kwargs)``."""

from . import linf  # noqa: F401  (registers the l-inf-dist models)
from . import linf_cnn, linf_construct, linf_ensemble  # noqa: F401  (CNNs, hybrids, ensembles, constructions)
from . import mcnf  # noqa: F401  (registers the l2 mCnF CNNs: 4c3f, 6c2f, 8c2f)
from . import residual_l2  # noqa: F401  (registers resmlp_l2: Fazlyab23 Prop. 3.1 residual layers)
from .linf import LinfDistNet
from .linf_ensemble import LinfEnsemble, LinfVotingEnsemble
from .linf_hybrid import LinfHybridNet
from .mcnf import MCNF
from .registry import available, build, factory_params, register

__all__ = ["LinfDistNet", "LinfEnsemble", "LinfHybridNet", "LinfVotingEnsemble", "MCNF", "available", "build", "factory_params", "register"]
