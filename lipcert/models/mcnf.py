"""mCnF CNNs of Huang21 Appendix C.1 (4C3F, 6C2F, 8C2F) for l2 Lipschitz certification.

``C(c, k, s, p)`` is a 3x3/4x4 convolution with c output channels, kernel k, stride s and zero
padding p; ``F(c)`` a fully connected layer. An activation follows every layer but the last
(Huang21 C.1: ReLU-theta; ReLU, MaxMin and clipped MaxMin by name). The input normalisation
``(x - mean) / std`` is the first layer, so models take raw [0, 1] pixels; the l2 bounds fold its
1/std into the first layer's operator, so every bound and radius is in raw pixel units.

``dense="aol"`` makes every fully connected layer an almost-orthogonal layer
(:class:`lipcert.nn.aol.AOLLinear`, Prach & Lampert 2022: ``||W D|| <= 1`` by construction).

Options of the authors' code (Huang21's yjhuangcd/local-lipschitz, ``utils.py``): ``theta_init``
as a list, one initial threshold per activation layer (clipped MaxMin: a number ``t`` for
a = t, b = -t, or a pair ``[a, b]``); ``init="kaiming_out"``, their initialisation of every
convolution, weights N(0, sqrt(2 / (k^2 C_out))) and bias 0 (fully connected layers keep
PyTorch's default, as there); raw [0, 1] inputs by ``mean=[0.0], std=1.0`` (the normalisation
layer is then the identity; radii are in raw units either way).

``crm-6c2f`` is the different "6C2F" of Fazlyab23's authors (their public code, CIFAR-10 / TinyImageNet):
C32(3)-C32(4)/2-C64(3)-C64(4)/2-C64(3)-C64(4)/2-F512-F10, three stride-2 convolutions (1024
features before the first dense layer on 32 x 32 inputs), where Huang21's 6C2F has two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ..nn.activations import make_activation
from ..nn.aol import AOLLinear
from ..nn.common import Flatten, InputNormalize
from .registry import register

#: (channels, kernel, stride, padding) of every conv layer, then the fully connected widths.
ARCHS: dict[str, tuple[list[tuple[int, int, int, int]], list[int]]] = {
    "4c3f": ([(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512, 512]),
    "6c2f": ([(32, 3, 1, 1), (32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512]),
    "crm-6c2f": ([(32, 3, 1, 1), (32, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1), (64, 3, 1, 1), (64, 4, 2, 1)], [512]),
    "8c2f": (
        [(64, 3, 1, 1), (64, 3, 1, 1), (64, 4, 2, 0), (128, 3, 1, 1), (128, 3, 1, 1), (128, 4, 2, 0), (256, 3, 1, 1), (256, 4, 2, 0)],
        [256],
    ),
}


#: fully connected layer types by name
DENSE = {"linear": nn.Linear, "aol": AOLLinear}
#: initialisations by name: PyTorch's default, or the Huang21 code's for every convolution
INITS = ("default", "kaiming_out")


def kaiming_out_(conv: nn.Conv2d) -> None:
    """The Huang21 code's convolution init: weights N(0, sqrt(2 / (k_h k_w C_out))), bias 0."""
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def layer_thresholds(theta_init, n: int) -> list:
    """One initial threshold per activation layer: ``theta_init`` repeated, or its n entries."""
    if isinstance(theta_init, (list, tuple)):
        if len(theta_init) != n:
            raise ValueError(f"theta_init lists one threshold per activation layer: {n} here, got {len(theta_init)}")
        return [list(t) if isinstance(t, (list, tuple)) else float(t) for t in theta_init]
    return [float(theta_init)] * n


class MCNF(nn.Sequential):
    """A chain ``InputNormalize, (Conv2d, act)*, Flatten, (Linear, act)*, Linear``.

    ``certificate = "l2_lipschitz"``: ``lipcert.certify`` certifies it by margin / (sqrt(2) L)
    with a global or local Lipschitz bound L (``lipcert.bounds``). ``in_shape`` is kept so the
    bounds know every layer's real input shape.
    """

    certificate = "l2_lipschitz"

    def __init__(self, *layers: nn.Module, in_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__(*layers)
        self.in_shape = tuple(int(s) for s in in_shape)

    def project_(self) -> None:
        """Project activation thresholds onto their constraints (after each optimiser step)."""
        for m in self.modules():
            if m is not self and hasattr(m, "project_"):
                m.project_()


def _scaled(c: int, width: float, even: bool) -> int:
    n = max(1, int(round(c * width)))
    if even and n % 2:
        n += 1
    return n


def build_mcnf(
    arch: str,
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    activation: str = "relu_theta",
    theta_init: float | Sequence = 1.0,
    width: float = 1.0,
    mean: Sequence[float] = (0.0,),
    std: float | Sequence[float] = 1.0,
    dense: str = "linear",
    init: str = "default",
) -> MCNF:
    """Build ``arch`` ("4c3f", "6c2f", "crm-6c2f", "8c2f"); ``width`` scales every channel count and hidden
    width (1.0 = the paper; smaller for CPU presets); ``dense``: "linear" (nn.Linear) or "aol"
    (AOLLinear) fully connected layers; ``theta_init``: one value, or one per activation layer;
    ``init``: "default" or "kaiming_out" (module docstring)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; available: {list(INITS)}")
    if dense not in DENSE:
        raise ValueError(f"unknown dense layer {dense!r}; available: {sorted(DENSE)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown mCnF architecture {arch!r}; available: {sorted(ARCHS)}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
    even = activation in ("maxmin", "clipped_maxmin")
    convs, fcs = ARCHS[arch]
    thresholds = iter(layer_thresholds(theta_init, len(convs) + len(fcs)))
    mean = list(mean) if isinstance(mean, (list, tuple)) else [float(mean)]
    if len(mean) == 1 and in_shape[0] > 1:
        mean = mean * in_shape[0]
    layers: list[nn.Module] = [InputNormalize(mean, std)]
    c, h, w = in_shape
    for ch, k, s, p in convs:
        ch = _scaled(ch, width, even)
        conv = nn.Conv2d(c, ch, k, stride=s, padding=p)
        if init == "kaiming_out":
            kaiming_out_(conv)
        layers.append(conv)
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if h < 1 or w < 1:
            raise ValueError(f"{arch} does not fit inputs of shape {in_shape}")
        c = ch
        layers.append(make_activation(activation, (c, h, w), next(thresholds)))
    layers.append(Flatten())
    d = c * h * w
    for f in fcs:
        f = _scaled(f, width, even)
        layers.append(DENSE[dense](d, f))
        layers.append(make_activation(activation, (f,), next(thresholds)))
        d = f
    layers.append(DENSE[dense](d, num_classes))
    return MCNF(*layers, in_shape=in_shape)


def _factory(arch: str):
    def factory(
        in_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        activation: str = "relu_theta",
        theta_init: float | Sequence = 1.0,
        width: float = 1.0,
        mean: Sequence[float] = (0.0,),
        std: float | Sequence[float] = 1.0,
        dense: str = "linear",
        init: str = "default",
    ) -> MCNF:
        return build_mcnf(arch, in_shape, num_classes, activation, theta_init, width, mean, std, dense, init)

    factory.__name__ = f"mcnf_{arch.replace('-', '_')}"
    source = "Fazlyab23 authors' code, 6C2F" if arch == "crm-6c2f" else f"Huang21 App. C.1 {arch.upper()}"
    factory.__doc__ = f"{source} (see ``build_mcnf``)."
    return factory


for _arch in ARCHS:
    register(_arch)(_factory(_arch))

__all__ = ["ARCHS", "INITS", "MCNF", "build_mcnf", "kaiming_out_", "layer_thresholds"]
