"""Convolutional l-inf-dist nets (EMAReport §2.1, §4.2) and the l-inf-dist Net + MLP hybrid (Zhang21 code).

Every factory returns either a plain :class:`LinfDistNet` (``head=None``: the last layer is an
l-inf-dist layer with bias, logits negated, certified by the margin) or, with ``head="mlp"``, a
:class:`LinfHybridNet` whose backbone ends with a mean-shift-normalised l-inf-dist layer and whose
head is ``Linear -> tanh -> Linear`` with ``head_hidden`` units (certified by interval arithmetic).

Layer configurations (every l-inf-dist layer is followed by mean-shift normalisation, as in Zhang21 §5;
``p``/``relaxation`` apply to all of them; conv kernels are square; ``MP(k, s)`` is max pooling):

* ``linf_conv`` (the authors' "ConvNet"): conv3x3(C->W), conv3x3(W->W), conv3x3/2(W->2W),
  conv3x3(2W->2W) x 2 (padding 1), then fc -> ``fc`` units, then the classes. W = ``width`` = 96 and
  fc = 1024 reproduce EMAReport Table 2 (51,256,874 parameters on CIFAR-10; +MLP 512: 51,776,554).
* ``linf_lenet``: conv5x5(C->6), MP(2), conv5x5(6->16), MP(2), fc 400 -> 120 -> ``fc_hidden``, then
  the classes. 28x28 inputs get padding 2 on the first conv (classic LeNet-5), so the flattened
  size is 16*5*5 on MNIST and CIFAR alike. ``fc_hidden`` = 512 without head, 1024 with the MLP head
  reproduce EMAReport's parameter counts (117,420 and 703,660 on CIFAR-10; 703,360 on MNIST).
  Unlike the authors' code we put no tanh between the fc layers (mean shift only).
* ``linf_alexnet``: conv7x7/2 (C->96, pad 2), MP(3, 2), conv5x5 (96->256, pad 2), MP(3, 2),
  conv3x3 (256->384), (384->384), (384->256) (pad 1), fc 1024 -> ``fc_hidden`` (512; 1024 with
  head), then the classes: 6,613,802 parameters on CIFAR-10 as in EMAReport Table 2 (+MLP: 7,662,890).
* ``linf_vgg``: five stages of 3x3 convs (pad 1) with ``channels`` (64, 128, 256, 512, 512) and
  ``depths`` (3, 3, 5, 5, 5) convs, MP(2) after the first four stages, then fc ``fc`` (256, 256)
  and the classes. The stage layout follows the authors' code; their VGG head was an ordinary
  Linear/ReLU MLP, which makes it a hybrid -- here the plain model is l-inf-dist throughout and
  ``head="mlp"`` gives the hybrid.
* ``linf_mlp_hybrid``: the 2021 "l-inf-dist Net + MLP": ``depth`` l-inf-dist layers of ``width``
  then the head (5 x 5120 + 512 on CIFAR-10 = 123,213,322 parameters; 4 x 5120 + 256 on MNIST).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ..nn import Flatten, InputNormalize, LinfDistConv2d, LinfDistLinear, MaxPool2d, MeanShiftNorm, Negate
from .linf import LinfDistNet
from .linf_hybrid import LinfHybridNet, mlp_head
from .registry import register

HEADS = (None, "mlp")


class _Builder:
    """Appends layers while tracking the activation shape (C, H, W) or (D,)."""

    def __init__(self, in_shape: Sequence[int], mean, std, p: float, relaxation: str, identity_init: bool, momentum: float) -> None:
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {list(in_shape)}")
        self.shape = tuple(int(s) for s in in_shape)
        self.layers: list[nn.Module] = [InputNormalize(mean, std)]
        self.p, self.relaxation, self.identity_init, self.momentum = p, relaxation, identity_init, momentum

    def conv(self, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        c, h, w = self.shape
        layer = LinfDistConv2d(
            c, out_channels, kernel, stride=stride, padding=padding, p=self.p, relaxation=self.relaxation,
            identity_init=self.identity_init and c <= out_channels,
        )
        ho, wo = layer.output_shape(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(f"input of spatial size {h}x{w} is too small for a {kernel}x{kernel}/{stride} conv; use larger inputs")
        self.layers += [layer, MeanShiftNorm(out_channels, momentum=self.momentum)]
        self.shape = (out_channels, ho, wo)

    def pool(self, kernel: int, stride: int | None = None) -> None:
        c, h, w = self.shape
        stride = stride or kernel
        ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"feature map {h}x{w} is too small for {kernel}x{kernel} max pooling; use larger inputs")
        self.layers.append(MaxPool2d(kernel, stride))
        self.shape = (c, ho, wo)

    def flatten(self) -> None:
        if len(self.shape) == 3:
            self.layers.append(Flatten())
            self.shape = (math.prod(self.shape),)

    def fc(self, width: int) -> None:
        self.flatten()
        d = self.shape[0]
        self.layers += [
            LinfDistLinear(d, width, p=self.p, relaxation=self.relaxation, identity_init=self.identity_init and d <= width),
            MeanShiftNorm(width, momentum=self.momentum),
        ]
        self.shape = (width,)

    def finish(self, num_classes: int, head: str | None, head_hidden: int, negate_logits: bool) -> nn.Module:
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.flatten()
        if head == "mlp":
            return LinfHybridNet(LinfDistNet(*self.layers), mlp_head(self.shape[0], head_hidden, num_classes))
        self.layers.append(LinfDistLinear(self.shape[0], num_classes, p=self.p, relaxation=self.relaxation, bias=True))
        if negate_logits:
            self.layers.append(Negate())
        return LinfDistNet(*self.layers)


def _common_doc(fn):
    fn.__doc__ = (fn.__doc__ or "") + """
    Common arguments: ``in_shape`` (C, H, W), ``num_classes``, ``mean``/``std`` (input normalisation
    inside the model; raw [0, 1] inputs), ``p`` and ``relaxation`` ("lp" | "lse") of every
    l-inf-dist layer, ``identity_init`` (Zhang21 §5.3, where in <= out), ``head`` (None | "mlp"),
    ``head_hidden``, ``negate_logits`` (plain models), ``momentum`` of mean-shift normalisation.
    """
    return fn


@register("linf_conv")
@_common_doc
def linf_conv(
    in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, width: int = 96, fc: int = 1024,
    mean: Sequence[float] = (0.0,), std: float | Sequence[float] = 1.0, p: float = math.inf, relaxation: str = "lp",
    identity_init: bool = True, head: str | None = None, head_hidden: int = 512, negate_logits: bool = True,
    momentum: float = 0.1,
) -> nn.Module:
    """l-inf-dist ConvNet (EMAReport Table 2 "l-inf-dist ConvNet"; see the module docstring)."""
    b = _Builder(in_shape, mean, std, p, relaxation, identity_init, momentum)
    b.conv(width, 3, padding=1)
    b.conv(width, 3, padding=1)
    b.conv(2 * width, 3, stride=2, padding=1)
    b.conv(2 * width, 3, padding=1)
    b.conv(2 * width, 3, padding=1)
    b.fc(fc)
    return b.finish(num_classes, head, head_hidden, negate_logits)


@register("linf_lenet")
@_common_doc
def linf_lenet(
    in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, channels: Sequence[int] = (6, 16),
    fc: Sequence[int] | None = None, conv1_padding: int | None = None,
    mean: Sequence[float] = (0.0,), std: float | Sequence[float] = 1.0, p: float = math.inf, relaxation: str = "lp",
    identity_init: bool = True, head: str | None = None, head_hidden: int = 512, negate_logits: bool = True,
    momentum: float = 0.1,
) -> nn.Module:
    """l-inf-dist LeNet (EMAReport §4.2, Table 4). ``fc`` defaults to (120, 512), or (120, 1024) with the
    MLP head; ``conv1_padding`` defaults to 2 for 28x28 inputs and 0 otherwise."""
    if len(channels) != 2:
        raise ValueError(f"channels must give the two conv widths, got {list(channels)}")
    if fc is None:
        fc = (120, 1024) if head == "mlp" else (120, 512)
    if conv1_padding is None:
        conv1_padding = 2 if tuple(in_shape[1:]) == (28, 28) else 0
    b = _Builder(in_shape, mean, std, p, relaxation, identity_init, momentum)
    b.conv(int(channels[0]), 5, padding=conv1_padding)
    b.pool(2)
    b.conv(int(channels[1]), 5)
    b.pool(2)
    for width in fc:
        b.fc(int(width))
    return b.finish(num_classes, head, head_hidden, negate_logits)


@register("linf_alexnet")
@_common_doc
def linf_alexnet(
    in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, fc: Sequence[int] | None = None,
    mean: Sequence[float] = (0.0,), std: float | Sequence[float] = 1.0, p: float = math.inf, relaxation: str = "lp",
    identity_init: bool = True, head: str | None = None, head_hidden: int = 512, negate_logits: bool = True,
    momentum: float = 0.1,
) -> nn.Module:
    """l-inf-dist AlexNet (EMAReport Table 2). ``fc`` defaults to (1024, 512), or (1024, 1024) with the head."""
    if fc is None:
        fc = (1024, 1024) if head == "mlp" else (1024, 512)
    b = _Builder(in_shape, mean, std, p, relaxation, identity_init, momentum)
    b.conv(96, 7, stride=2, padding=2)
    b.pool(3, 2)
    b.conv(256, 5, padding=2)
    b.pool(3, 2)
    b.conv(384, 3, padding=1)
    b.conv(384, 3, padding=1)
    b.conv(256, 3, padding=1)
    for width in fc:
        b.fc(int(width))
    return b.finish(num_classes, head, head_hidden, negate_logits)


@register("linf_vgg")
@_common_doc
def linf_vgg(
    in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, channels: Sequence[int] = (64, 128, 256, 512, 512),
    depths: Sequence[int] = (3, 3, 5, 5, 5), pools: Sequence[bool] = (True, True, True, True, False),
    fc: Sequence[int] = (256, 256),
    mean: Sequence[float] = (0.0,), std: float | Sequence[float] = 1.0, p: float = math.inf, relaxation: str = "lp",
    identity_init: bool = True, head: str | None = None, head_hidden: int = 512, negate_logits: bool = True,
    momentum: float = 0.1,
) -> nn.Module:
    """l-inf-dist VGG (EMAReport Table 2): stages of 3x3 convs with max pooling, then fc layers."""
    if not (len(channels) == len(depths) == len(pools)):
        raise ValueError(f"channels, depths and pools must have one entry per stage, got {list(channels)}, {list(depths)}, {list(pools)}")
    b = _Builder(in_shape, mean, std, p, relaxation, identity_init, momentum)
    for width, depth, pool in zip(channels, depths, pools):
        for _ in range(int(depth)):
            b.conv(int(width), 3, padding=1)
        if pool:
            b.pool(2)
    for width in fc:
        b.fc(int(width))
    return b.finish(num_classes, head, head_hidden, negate_logits)


@register("linf_mlp_hybrid")
@_common_doc
def linf_mlp_hybrid(
    in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, width: int = 5120, depth: int = 4,
    mean: Sequence[float] = (0.0,), std: float | Sequence[float] = 1.0, p: float = math.inf, relaxation: str = "lp",
    identity_init: bool = True, head: str | None = "mlp", head_hidden: int = 256, negate_logits: bool = True,
    momentum: float = 0.1,
) -> nn.Module:
    """The 2021 "l-inf-dist Net + MLP" (Zhang21 code; EMAReport Table 1): ``depth`` mean-shift-normalised
    l-inf-dist layers of ``width`` units, then ``Linear -> tanh -> Linear`` with ``head_hidden``
    units (authors: 256 on MNIST, 512 on Fashion-MNIST / CIFAR-10)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    b = _Builder(in_shape, mean, std, p, relaxation, identity_init, momentum)
    for _ in range(depth):
        b.fc(width)
    return b.finish(num_classes, head, head_hidden, negate_logits)
