"""lipcert: certified adversarial robustness with Lipschitz networks.

l-inf-dist nets certified by a single forward pass (Zhang et al. 2021/2022) and l2 Lipschitz-bound
training of ReLU / MaxMin CNNs (Huang et al. 2021; Fazlyab et al. 2023), in one library.

>>> import lipcert
>>> model = lipcert.load("runs/mnist5k-linf/model.pt")      # eval mode, raw [0, 1] inputs
>>> x, y = lipcert.data.load("mnist5k", "test")
>>> cert = lipcert.certify.certify(model, x, y)               # per-sample certified radii
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load(path: str | Path, map_location: str = "cpu", verify: bool = True):
    """The model stored in a lipcert checkpoint, in eval mode (weights only; no code is run).

    ``verify`` checks the file's content hash and refuses a corrupted file (see
    :mod:`lipcert.checkpoint`); ``verify=False`` loads it with a warning.
    """
    from .checkpoint import load_model

    return load_model(path, map_location=map_location, verify=verify)


def __getattr__(name: str):
    # Submodules on first use, so ``import lipcert`` stays cheap for the CLI.
    import importlib

    if name in {"analysis", "attacks", "bounds", "certify", "checkpoint", "config", "data", "losses", "models", "nn", "train"}:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lipcert' has no attribute {name!r}")


__all__ = ["__version__", "load"]
