"""Residual l-inf-dist neurons (EMAReport Eq. 7): ``u_k(z) = c z_k + (1 - c) ||z - w_k|| + b_k``.

For a square l-inf-dist layer f (output shape = input shape: ``LinfDistLinear(n, n)`` or a
``LinfDistConv2d(C, C, k, padding=k // 2)``), ``y = c x + (1 - c) f(x)`` with c in [0, 1).
Both terms are 1-Lipschitz w.r.t. l-inf, so their convex combination is too:
``||y(a) - y(b)|| <= c ||a - b|| + (1 - c) ||f(a) - f(b)|| <= ||a - b||`` (in general the constant
is ``c + (1 - c) L_f``). The skip term passes gradient to every coordinate, which the sparse
l-inf gradient does not (EMAReport §5.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinfDistResidual(nn.Module):
    """``y = c * x + (1 - c) * layer(x)`` for a square l-inf-dist ``layer`` (EMAReport Eq. 7).

    ``c`` is a fixed number in [0, 1). ``set_p`` reaches the wrapped layer (it is a submodule).
    """

    def __init__(self, layer: nn.Module, c: float = 0.5) -> None:
        super().__init__()
        c = float(c)
        if not 0.0 <= c < 1.0:
            raise ValueError(f"the residual weight c must be in [0, 1), got {c}")
        for attr in ("linf_lipschitz", "rounding_error"):
            if not hasattr(layer, attr):
                raise TypeError(f"{type(layer).__name__} states no {attr}(); wrap an l-inf-dist layer")
        if is_square(layer) is False:
            raise ValueError(f"a residual l-inf-dist layer must be square (output shape = input shape), got {layer}")
        self.layer = layer
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        if out.shape != x.shape:
            raise ValueError(
                f"a residual l-inf-dist layer must be square: input {tuple(x.shape)} but the wrapped layer "
                f"gives {tuple(out.shape)} (use equal in/out features; for convs padding = kernel_size // 2, stride 1)"
            )
        if self.c == 0.0:
            return out
        return self.c * x + (1.0 - self.c) * out

    def linf_lipschitz(self) -> float:
        """``c + (1 - c) L_layer``: exactly 1 when the wrapped layer is 1-Lipschitz."""
        inner = float(self.layer.linf_lipschitz())
        return 1.0 if inner == 1.0 else self.c + (1.0 - self.c) * inner

    def rounding_error(self, in_absmax: Tensor, out_absmax: Tensor, unit: float) -> Tensor:
        """The wrapped layer's error times (1 - c), plus two products and a sum.

        ``|layer(x)| <= (|out| + c |x|) / (1 - c)``; the products ``c * x``, ``(1 - c) * f`` and the sum
        are each off by at most ``unit`` relative (plus the rounding of c to the evaluation dtype,
        another ``unit``), hence the factor 4.
        """
        inner_out = (out_absmax + self.c * in_absmax) / (1.0 - self.c)
        inner_err = self.layer.rounding_error(in_absmax, inner_out, unit)
        if self.c == 0.0:
            return inner_err
        return (1.0 - self.c) * inner_err + 4.0 * unit * (self.c * in_absmax + (1.0 - self.c) * inner_out + out_absmax)

    def interval_bounds(self, lo: Tensor, hi: Tensor, unit: float = 0.0) -> tuple[Tensor, Tensor]:
        """``c [lo, hi] + (1 - c) [f_lo, f_hi]`` (sound since c >= 0; not exact, the two terms are
        bounded separately), widened by the rounding of the combination."""
        f_lo, f_hi = self.layer.interval_bounds(lo, hi, unit)
        if self.c == 0.0:
            return f_lo, f_hi
        lower = self.c * lo + (1.0 - self.c) * f_lo
        upper = self.c * hi + (1.0 - self.c) * f_hi
        if unit:
            err = 4.0 * unit * (self.c * torch.maximum(lo.abs(), hi.abs()) + (1.0 - self.c) * torch.maximum(f_lo.abs(), f_hi.abs()) + torch.maximum(lower.abs(), upper.abs()))
            lower, upper = lower - err, upper + err
        return lower, upper

    def extra_repr(self) -> str:
        return f"c={self.c}"


def is_square(layer: nn.Module) -> bool | None:
    """Whether an l-inf-dist layer maps its input shape to itself (None: cannot tell)."""
    if hasattr(layer, "in_features"):
        return layer.in_features == layer.out_features
    if hasattr(layer, "in_channels"):
        k, s, pad = layer.kernel_size, layer.stride, layer.padding
        return (
            layer.in_channels == layer.out_channels
            and s == (1, 1)
            and all(kk % 2 == 1 and pp == kk // 2 for kk, pp in zip(k, pad))
        )
    return None
