"""Architectures by name: ``lipcert.models.build(name, **kwargs)``."""

from . import linf  # noqa: F401  (registers the l-inf-dist models)
from .linf import LinfDistNet
from .registry import available, build, factory_params, register

__all__ = ["LinfDistNet", "available", "build", "factory_params", "register"]
