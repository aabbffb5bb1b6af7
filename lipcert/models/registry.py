"""Model registry: architectures by name, as timm / torchvision do (``build(name, **kwargs)``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names of all registered models."""
    return sorted(_REGISTRY)


def build(name: str, **kwargs) -> nn.Module:
    """Build model ``name``; the spec (name + kwargs) is kept on ``model.lipcert_spec`` for checkpoints.

    kwargs must be plain data (numbers, strings, lists, dicts) so a checkpoint can rebuild the
    model without executing anything stored in it.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    fn = _REGISTRY[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"model {name!r} does not take {unknown}; it takes {sorted(params)}")
    model = fn(**kwargs)
    model.lipcert_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def factory_params(name: str) -> set[str] | None:
    """Keyword arguments model ``name`` accepts (None if it takes ``**kwargs``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    params = inspect.signature(_REGISTRY[name]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)
