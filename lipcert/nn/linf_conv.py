"""Convolutional l-inf-dist layer (EMAReport §2.1; the conv form of Zhang21 Eq. 2).

Every output ``y[b, o, i, j] = ||patch_(i,j)(x_b) - w_o||_p + b_o``: the distance of one input
patch (all in-channels of the group, kernel window) to one filter. Patches are unfolded from a
channels-last copy (features in (kh, kw, c) order, filters permuted to match) and fed to the same
distance kernels as
:class:`~lipcert.nn.LinfDistLinear` (so fast backends apply to convolutions too).

Lipschitz facts. A patch is a sub-vector of the (padded) input, and the padding entries are
constants that do not depend on the input, so ``||patch(a) - patch(b)||_inf <= ||a - b||_inf``.
Each output is therefore 1-Lipschitz w.r.t. l-inf at p = inf (or with ``relaxation="lse"``), and
``D^(1/p)``-Lipschitz with D = (in_channels / groups) * k_h * k_w in the l_p relaxation
(Zhang22 Prop. 4.1). Any constant pad value keeps this; the default 0 is the mean of the previous
mean-shift-normalised layer (and of the normalised input), as zero padding is in ordinary CNNs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .box import box_rounding_error, linf_box_bounds
from .linf import IDENTITY_INIT_VALUE
from .relaxation import check_relaxation, distance_lipschitz, distance_rounding_error, neuron_distance


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class _Patches(torch.autograd.Function):
    """Unfolded patches ``(groups, B*L, kh*kw*c_g)`` with features in (kh, kw, c) order.

    Forward: one channels-last copy of the (padded) input, then one copy of the strided window
    view whose innermost runs are c_g contiguous channels (about 3x faster than gathering the
    NCHW windows, whose innermost runs are kw entries). Backward: kh*kw strided adds of the
    patch gradients into a channels-last buffer (instead of the generic ``unfold_backward``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                pad_value: float, groups: int) -> Tensor:  # type: ignore[override]
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        b, c, h, w = x.shape
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        xc = x.new_empty(b, h + 2 * ph, w + 2 * pw, c)
        if ph or pw:
            xc.fill_(pad_value)
        xc[:, ph : ph + h, pw : pw + w, :] = x.permute(0, 2, 3, 1)
        win = xc.unfold(1, kh, sh).unfold(2, kw, sw)  # (B, ho, wo, C, kh, kw), a view
        cg = c // groups
        win = win.reshape(b, ho, wo, groups, cg, kh, kw).permute(3, 0, 1, 2, 5, 6, 4)
        ctx.geom = (b, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw, groups)
        return win.reshape(groups, b * ho * wo, kh * kw * cg)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        b, c, h, w, ho, wo, kh, kw, sh, sw, ph, pw, groups = ctx.geom
        cg = c // groups
        gv = grad.reshape(groups, b, ho, wo, kh, kw, cg)
        gx = grad.new_zeros(b, h + 2 * ph, w + 2 * pw, groups, cg)
        for i in range(kh):
            for j in range(kw):
                dst = gx[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
                dst += gv[:, :, :, :, i, j, :].permute(1, 2, 3, 0, 4)
        gx = gx[:, ph : ph + h, pw : pw + w].reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return gx, None, None, None, None, None


class LinfDistConv2d(nn.Module):
    """l-inf-dist convolution: ``y = ||patch - w_o||_p + b_o`` for every patch and filter.

    Args mirror ``nn.Conv2d``: ``kernel_size``, ``stride``, ``padding`` (ints or pairs),
    ``groups`` (in- and out-channels split into groups, each output sees only its group's
    channels). ``pad_value`` is the constant used for padding. ``p``, ``relaxation``,
    ``bias`` and ``identity_init`` as for :class:`~lipcert.nn.LinfDistLinear`; the identity init
    puts ``-c`` on the centre tap of channel ``o mod (in/groups)`` (in/groups <= out/groups).
    """

    is_lp_dist_layer = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
        p: float = math.inf,
        bias: bool = False,
        identity_init: bool = False,
        relaxation: str = "lp",
        pad_value: float = 0.0,
    ) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"bad kernel_size/stride/padding {self.kernel_size}/{self.stride}/{self.padding}")
        self.groups = groups
        self.p = float(p)
        self.relaxation = check_relaxation(relaxation)
        self.pad_value = float(pad_value)
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters(identity_init)

    @property
    def patch_features(self) -> int:
        """D: the number of input entries one output sees."""
        return (self.in_channels // self.groups) * self.kernel_size[0] * self.kernel_size[1]

    def reset_parameters(self, identity_init: bool = False) -> None:
        """Standard Gaussian weights; optionally the identity-map init on the centre tap."""
        with torch.no_grad():
            self.weight.normal_()
            if identity_init:
                cin, cout = self.in_channels // self.groups, self.out_channels // self.groups
                if cin > cout:
                    raise ValueError(f"identity-map init needs in/groups <= out/groups, got {cin} > {cout}")
                rows = torch.arange(self.out_channels)
                kh, kw = self.kernel_size
                self.weight[rows, rows % cin, kh // 2, kw // 2] = -IDENTITY_INIT_VALUE
            if self.bias is not None:
                self.bias.zero_()

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1

    def _patches(self, x: Tensor) -> tuple[Tensor, int, int]:
        """(groups, B*L, D) patches of x, features in (kh, kw, c) order (see :class:`_Patches`),
        and the output height/width. :meth:`_weight_cols` orders the filters to match."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LinfDistConv2d expects (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        ho, wo = self.output_shape(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            raise ValueError(f"input {tuple(x.shape[2:])} is smaller than the kernel {self.kernel_size} (padding {self.padding})")
        cols = _Patches.apply(x, self.kernel_size, self.stride, self.padding, self.pad_value, self.groups)
        return cols, ho, wo

    def _weight_cols(self, weight: Tensor) -> Tensor:
        """(groups, out/groups, D) filters in the (kh, kw, c) feature order of :meth:`_patches`."""
        og = self.out_channels // self.groups
        return weight.permute(0, 2, 3, 1).reshape(self.groups, og, self.patch_features)

    def _fold(self, y: Tensor, batch: int, ho: int, wo: int) -> Tensor:
        """(groups, B*L, out/groups) -> (B, out, ho, wo)."""
        og = self.out_channels // self.groups
        y = y.view(self.groups, batch, ho * wo, og).permute(1, 0, 3, 2)
        return y.reshape(batch, self.out_channels, ho, wo)

    def forward(self, x: Tensor) -> Tensor:
        cols, ho, wo = self._patches(x)
        batch = x.shape[0]
        w = self._weight_cols(self.weight)
        outs = [neuron_distance(cols[g], w[g], self.p, self.relaxation) for g in range(self.groups)]
        y = self._fold(torch.stack(outs), batch, ho, wo)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def linf_lipschitz(self) -> float:
        """1 at p = inf or with LSE; ``D^(1/p)`` in the l_p relaxation (Zhang22 Prop. 4.1)."""
        return distance_lipschitz(self.patch_features, self.p, self.relaxation)

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        """As :meth:`LinfDistLinear.rounding_error`, the pad value counting as an input entry."""
        w_max = float(self.weight.detach().abs().max()) if self.weight.numel() else 0.0
        in_absmax = in_absmax.clamp_min(abs(self.pad_value))
        return distance_rounding_error(self.patch_features, self.p, self.relaxation, in_absmax, w_max, out_absmax, unit)

    @torch.no_grad()
    def interval_bounds(self, lo: Tensor, hi: Tensor, unit: float = 0.0) -> tuple[Tensor, Tensor]:
        """Exact output range over the input box [lo, hi] at p = inf (padding is the constant
        ``pad_value`` in both), widened by the rounding error of its computation for ``unit``."""
        if not math.isinf(self.p):
            raise ValueError(f"interval bounds need p = inf, the layer has p = {self.p:g}; set p = inf first")
        lo_cols, ho, wo = self._patches(lo)
        hi_cols, _, _ = self._patches(hi)
        batch = lo.shape[0]
        w = self._weight_cols(self.weight.detach())
        lows, highs, shifts = [], [], []
        for g in range(self.groups):
            lower, upper, shift = linf_box_bounds(lo_cols[g], hi_cols[g], w[g])
            lows.append(lower)
            highs.append(upper)
            shifts.append(shift)
        lower, upper = self._fold(torch.stack(lows), batch, ho, wo), self._fold(torch.stack(highs), batch, ho, wo)
        if self.bias is not None:
            b = self.bias.detach().to(lower.dtype).view(1, -1, 1, 1)
            lower, upper = lower + b, upper + b
        if unit:
            in_absmax = torch.maximum(lo.abs(), hi.abs()).flatten(1).amax(1).clamp_min(abs(self.pad_value))
            out_absmax = torch.maximum(lower.abs(), upper.abs())
            w_max = float(self.weight.detach().abs().max()) if self.weight.numel() else 0.0
            err = box_rounding_error(in_absmax.view(-1, 1, 1, 1), w_max, out_absmax, max(shifts), unit)
            lower, upper = lower - err, upper + err
        return lower, upper

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            s += f", padding={self.padding}"
            if self.pad_value:
                s += f", pad_value={self.pad_value}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        s += f", p={self.p}, bias={self.bias is not None}"
        if self.relaxation == "lse":
            s += ", relaxation=lse"
        return s
