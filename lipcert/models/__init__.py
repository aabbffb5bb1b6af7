"""Architectures by name: ``lipcert.models.build(name, **kwargs)``."""

from . import linf  # noqa: F401  (registers the l-inf-dist models)
from . import mcnf  # noqa: F401  (registers the l2 mCnF CNNs: 4c3f, 6c2f, 8c2f)
from .linf import LinfDistNet
from .mcnf import MCNF
from .registry import available, build, factory_params, register

__all__ = ["LinfDistNet", "MCNF", "available", "build", "factory_params", "register"]
