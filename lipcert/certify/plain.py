"""Your own model: an ordinary torch network, read as a chain of layers the l2 bounds understand.

:func:`as_l2_model` turns a model lipcert did not build -- an ``nn.Sequential`` (nested ones are
flattened) or a module whose ``forward`` is a straight chain of its layers (checked by tracing it
with ``torch.fx``, never assumed from the order the layers were declared in) -- into a
:class:`PlainL2Net`: an ``nn.Sequential`` of the *same* layer objects (same weights) that declares
``certificate = "l2_lipschitz"`` and its input shape, so :func:`lipcert.certify.certify` certifies it
with every l2 bound lipcert has (global, local-upper, LipLT, best; ``lipcert.certify.l2`` and
``.pairwise``). Supported layers: see :data:`SUPPORTED`. Anything else is refused, naming the layer's
position, path and type. Shapes are followed layer by layer from the input shape, so a Linear
applied to an unflattened feature map (which torch applies to the last dimension only) is refused
too. Dropout is the identity in evaluation mode and becomes ``nn.Identity``; certificates are about
the model in evaluation mode.

Radii are in the model's input units: put the normalisation inside the model as its first layer
(``lipcert.nn.InputNormalize(mean, std)``) so they are in raw [0, 1] pixels.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..nn.activations import Activation
from ..nn.common import Flatten, InputNormalize
from ..bounds.layers import affine_op, role
from .result import CertificationError

SUPPORTED = ("nn.Linear, nn.Conv2d (groups=1, dilation=1, numeric zero padding), nn.ReLU, lipcert.nn.activations "
             "(ReLU, ReLUTheta, MaxMin = GroupSort-2 on channel halves, ClippedMaxMin), nn.Flatten (from dim 1), "
             "nn.Identity, nn.Dropout (identity in eval), lipcert.nn.InputNormalize (first layer only: a fixed "
             "per-channel (x - mean) / std)")


_LEAVES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d, InputNormalize, Activation)


class PlainL2Net(nn.Sequential):
    """An ``nn.Sequential`` of a plain model's layers that lipcert's l2 certificates accept."""

    certificate = "l2_lipschitz"

    def __init__(self, *layers: nn.Module, in_shape: Sequence[int]) -> None:
        super().__init__(*layers)
        self.in_shape = tuple(int(s) for s in in_shape)


def _name(m: nn.Module) -> str:
    cls = type(m)
    mod = cls.__module__
    if mod.startswith("torch.nn"):
        return f"nn.{cls.__name__}"
    if mod.startswith("lipcert."):
        return f"lipcert.nn.{cls.__name__}"
    return f"{mod}.{cls.__name__}"


def _unsupported(i: int, path: str, m: nn.Module | str, why: str = "") -> CertificationError:
    what = m if isinstance(m, str) else _name(m)
    where = f", {path!r}" if path and path != str(i) else ""
    return CertificationError(f"layer {i} ({what}{where}) is not supported by the l2 bounds{why}; supported: {SUPPORTED}")


def _sequential_layers(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if type(child) is nn.Sequential:  # plain containers only: a subclass may override forward
            out.extend(_sequential_layers(child, path + "."))
        elif not isinstance(child, _LEAVES) and any(True for _ in child.children()):
            # a block of the user's own (e.g. conv + relu): read its forward by tracing it
            out.extend((f"{path}.{p}", m) for p, m in _traced_layers(child))
        else:
            out.append((path, child))
    return out


def _traced_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of ``model``'s forward when it is a straight chain (torch.fx trace)."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            # lipcert's layers are read whole (their rules are what the bounds use)
            return isinstance(m, (Activation, InputNormalize)) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 - tracing fails on data-dependent control flow and more
        raise CertificationError(
            f"{type(model).__name__} is not an nn.Sequential and its forward could not be traced with torch.fx "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); write it as an nn.Sequential of "
            f"supported layers ({SUPPORTED})") from None
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise CertificationError(f"{type(model).__name__}.forward takes {len(inputs)} inputs; the l2 bounds need one")
    cur = inputs[0]
    batch: set = set()  # nodes that hold x.size(0) / x.shape[0]
    shape_nodes: set = set()  # x.shape
    out: list[tuple[str, nn.Module]] = []
    for n in nodes:
        if n.op == "placeholder":
            continue
        pos = len(out)
        if n.op == "output":
            if n.args[0] is not cur:
                raise CertificationError(f"{type(model).__name__}.forward does not return the last layer's output")
            break
        if n.op == "call_method" and n.target == "size" and n.args[0] is cur and n.args[1:] == (0,):
            batch.add(n)
            continue
        if n.op == "call_function" and n.target is getattr and n.args == (cur, "shape"):
            shape_nodes.add(n)
            continue
        if n.op == "call_function" and n.target is operator.getitem and n.args[0] in shape_nodes and n.args[1] == 0:
            batch.add(n)
            continue
        if not n.args or n.args[0] is not cur or any(isinstance(a, fx.Node) and a not in batch for a in n.args[1:]) \
                or any(isinstance(v, fx.Node) for v in n.kwargs.values()):
            raise CertificationError(
                f"{type(model).__name__}.forward is not a straight chain of layers (at {n.op} {n.target}: it combines "
                f"values, e.g. a residual connection); the l2 bounds need x -> layer -> layer -> ... -> logits")
        if n.op == "call_module":
            out.append((str(n.target), model.get_submodule(str(n.target))))
        elif _is_relu(n):
            out.append((f"forward ({n.name})", nn.ReLU()))
        elif _is_flatten(n, batch):
            out.append((f"forward ({n.name})", nn.Flatten()))
        else:
            raise _unsupported(pos, "", f"operation {getattr(n.target, '__name__', n.target)!r} in forward")
        cur = n
    return out


def _is_relu(n) -> bool:
    import torch.nn.functional as F

    # in place or not, the same values (lipcert's copy is never in place)
    if n.op == "call_function" and n.target in (F.relu, torch.relu, torch.relu_):
        return len(n.args) == 1 or (len(n.args) == 2 and isinstance(n.args[1], bool))
    return n.op == "call_method" and n.target in ("relu", "relu_") and len(n.args) == 1


def _is_flatten(n, batch: set) -> bool:
    args, kw = n.args[1:], dict(n.kwargs)
    if n.op == "call_function" and n.target is torch.flatten or n.op == "call_method" and n.target == "flatten":
        start = kw.pop("start_dim", args[0] if args else 0)
        end = kw.pop("end_dim", args[1] if len(args) > 1 else -1)
        return not kw and start == 1 and end == -1
    if n.op == "call_method" and n.target in ("view", "reshape"):
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return len(dims) == 2 and dims[0] in batch and dims[1] == -1 and not kw
    return False


def _numeric_padding(m: nn.Conv2d) -> nn.Conv2d:
    """``padding="valid"`` / ``"same"`` (stride 1, odd kernels: symmetric) as numbers, on the same
    weight and bias objects; anything else unchanged (and refused by the caller)."""
    if not isinstance(m.padding, str) or tuple(m.dilation) != (1, 1):
        return m
    k = tuple(m.kernel_size)
    if m.padding == "valid":
        pad = (0, 0)
    elif m.padding == "same" and tuple(m.stride) == (1, 1) and all(kk % 2 == 1 for kk in k):
        pad = (k[0] // 2, k[1] // 2)
    else:
        return m
    conv = nn.Conv2d(m.in_channels, m.out_channels, k, stride=m.stride, padding=pad, groups=m.groups,
                     bias=m.bias is not None, padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype)
    conv.weight = m.weight
    conv.bias = m.bias
    return conv


def as_l2_model(model: nn.Module, in_shape: Sequence[int]) -> nn.Module:
    """``model`` as a network lipcert certifies in l2 (see module docstring); lipcert's own l2 models
    are returned unchanged. ``in_shape`` is one input's shape (C, H, W) (or (D,) for vectors)."""
    if getattr(model, "certificate", None) == "l2_lipschitz":
        return model
    if getattr(model, "certificate", None) is not None:
        raise CertificationError(f"{type(model).__name__} is a lipcert model certified by {model.certificate!r}, "
                                 "not an l2 network")
    layers = _sequential_layers(model) if type(model) is nn.Sequential else _traced_layers(model)
    shape = tuple(int(s) for s in in_shape)
    converted: list[nn.Module] = []
    prev_affine = False
    for i, (path, m) in enumerate(layers):
        if type(m) is InputNormalize:
            if i != 0:
                raise _unsupported(i, path, m, " after the first layer (a fixed normalisation must come first)")
            if m.mean.numel() != shape[0]:
                raise CertificationError(f"layer {i} ({_name(m)}) normalises {m.mean.numel()} channels but "
                                         f"inputs have shape {shape}")
            converted.append(m)
        elif type(m) in (nn.Dropout, nn.Dropout2d, nn.Identity):  # exact classes: a subclass may override forward
            converted.append(nn.Identity())
        elif type(m) in (nn.Flatten, Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(i, path, m, f" with start_dim={m.start_dim}, end_dim={m.end_dim} (only 1, -1)")
            converted.append(m if isinstance(m, Flatten) else nn.Flatten())
            shape = (math.prod(shape),)
        elif type(m) is nn.Conv2d:  # exact classes: a subclass may override forward
            m = _numeric_padding(m)
            if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise _unsupported(i, path, m, f" with groups={m.groups}, dilation={tuple(m.dilation)}, "
                                   f"padding={m.padding!r}, padding_mode={m.padding_mode!r}")
            if len(shape) != 3 or shape[0] != m.in_channels:
                raise CertificationError(f"layer {i} (nn.Conv2d, {path!r}) takes {m.in_channels} channels but its "
                                         f"input has shape {shape}")
            try:
                shape = affine_op(m, shape).out_shape
            except ValueError:
                raise CertificationError(f"layer {i} (nn.Conv2d, {path!r}) does not fit its input") from None
            converted.append(m)
        elif type(m) is nn.Linear:
            if len(shape) != 1 or shape[0] != m.in_features:
                raise CertificationError(
                    f"layer {i} (nn.Linear, {path!r}) takes {m.in_features} features but its input has shape {shape}"
                    + ("; put an nn.Flatten() before it" if len(shape) > 1 else ""))
            shape = (m.out_features,)
            converted.append(m)
        elif type(m) is nn.ReLU:
            converted.append(nn.ReLU())  # never in place (the bounds keep pre-activations)
        elif isinstance(m, Activation):
            converted.append(m)
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)) and i == len(layers) - 1:
            raise _unsupported(i, path, m, " as the last layer (certificates are about the logits: drop it, the "
                               "prediction is the same)")
        else:
            raise _unsupported(i, path, m)
        if role(m) == "affine":
            prev_affine = True
    if not prev_affine:
        raise CertificationError(f"{type(model).__name__} has no nn.Linear / nn.Conv2d layer")
    if len(shape) != 1:
        raise CertificationError(f"{type(model).__name__} must output (N, classes) logits; its output has shape {shape}")
    net = PlainL2Net(*converted, in_shape=in_shape)
    # every supported layer computes the same in training and evaluation mode; the layers are the
    # caller's own objects, so their mode is left alone (net.eval() would switch them)
    net.training = False
    return net


@torch.no_grad()
def check_same_outputs(model: nn.Module, net: nn.Module, x: Tensor) -> None:
    """``net`` computes what ``model`` computes (in evaluation mode) on ``x``; a guard for traced models."""
    if net is model:
        return
    was = model.training
    model.eval()
    try:
        a, b = model(x), net(x)
    finally:
        model.train(was)
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(a.abs().max()))):
        raise CertificationError(f"{type(model).__name__} does not compute the chain of its layers lipcert read "
                                 "(outputs differ); write it as an nn.Sequential")


__all__ = ["PlainL2Net", "SUPPORTED", "as_l2_model", "check_same_outputs"]
