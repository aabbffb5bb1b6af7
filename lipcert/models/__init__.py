"""Architectures by name: ``lipcert.models.build(name, **kwargs)``."""

from . import linf  # noqa: F401  (registers the l-inf-dist models)
from . import linf_cnn, linf_construct, linf_ensemble  # noqa: F401  (CNNs, hybrids, ensembles, constructions)
from .linf import LinfDistNet
from .linf_ensemble import LinfEnsemble
from .linf_hybrid import LinfHybridNet
from .registry import available, build, factory_params, register

__all__ = ["LinfDistNet", "LinfEnsemble", "LinfHybridNet", "available", "build", "factory_params", "register"]
