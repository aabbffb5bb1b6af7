"""``lipcert certify --model-factory MODULE:FUNCTION --weights FILE``: your own torch model.

The factory is code *you* name on the command line (a module on ``sys.path`` or a ``.py`` file),
imported and called with no arguments to build the architecture. The weights are only data: a
``.safetensors`` file or a state dict saved with ``torch.save`` (read with
``torch.load(weights_only=True)``, which runs no code from the file).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn


def load_factory(spec: str):
    """The callable ``FUNCTION`` of ``MODULE:FUNCTION`` (MODULE a dotted module or a path to a .py file)."""
    module_name, sep, func = spec.rpartition(":")
    if not sep or not module_name or not func:
        raise ValueError(f"--model-factory {spec!r}: write MODULE:FUNCTION, e.g. mynet.py:make_net or mypkg.nets:make_net")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise ValueError(f"--model-factory: {path} does not exist")
        name = f"lipcert_user_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"--model-factory: cannot import {path}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))  # its own sibling imports
        try:
            loader_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"--model-factory: cannot import module {module_name!r}: {err} (is it on PYTHONPATH? or "
                             "give the .py file's path)") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ValueError(f"--model-factory: {module_name} has no function {func!r}")
    return fn


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch.save'd dict of tensors (weights only)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--weights {p} does not exist")
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"--weights {p} is not a readable safetensors file: {err}") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the weights-only unpickler refuses anything but plain data
        raise ValueError(f"--weights {p} is not a state dict torch.load(weights_only=True) reads (save "
                         f"model.state_dict(), not the model): {str(err).splitlines()[0] if str(err) else err}") from None
    if isinstance(state, dict) and state.get("format") == "lipcert-checkpoint":
        raise ValueError(f"--weights {p} is a lipcert checkpoint; certify it directly: lipcert certify {p} ...")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {p} must hold a state dict (names -> tensors), got {type(state).__name__}")
    return state


def build_own_model(factory: str, weights: str | None) -> nn.Module:
    """Call the factory and load the weights into what it built (strictly: every tensor must fit)."""
    model = load_factory(factory)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model-factory {factory} returned a {type(model).__name__}, not an nn.Module")
    if weights:
        try:
            model.load_state_dict(read_weights(weights))
        except RuntimeError as err:
            raise ValueError(f"--weights {weights} do not fit the model {factory} builds: "
                             f"{str(err).splitlines()[0]} {' '.join(str(err).splitlines()[1:3])}") from None
    return model.eval()
