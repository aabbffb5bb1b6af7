"""Batched colour augmentation for EMAReport's MAUG / SAUG (App. C.3, Table 7), in plain torch.

Per-image formulas as torchvision documents ``ColorJitter`` and ``RandomGrayscale`` (images in
[0, 1], every result clamped to [0, 1]):

* grayscale ``L = 0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2, PIL's ``convert("L")``, the path the
  EMAReport code takes: its transforms act on PIL images); one-channel images are their own gray;
* brightness ``b``: ``clamp(b x)``;
* contrast ``c``: ``clamp(c x + (1 - c) m)``, m the mean of the image's grayscale;
* saturation ``s``: ``clamp(s x + (1 - s) L(x))`` per pixel (one-channel images unchanged);
* hue ``h`` in [-0.5, 0.5]: to HSV, ``H <- (H + h) mod 1``, back to RGB (one-channel unchanged).

``ColorJitter`` applies the four in a random order per image; here every image has its own factors
and its own order (``order``: a permutation of 0..3 = brightness, contrast, saturation, hue).
Unlike the PIL path, nothing is rounded to 8 bits between the operations.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: ITU-R 601-2 luma weights (PIL's RGB -> L)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
#: the operation order indices of :func:`color_jitter`
OPS = ("brightness", "contrast", "saturation", "hue")


def grayscale(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma of (B, C, H, W) images (C = 1: the image itself; C = 3: GRAY_WEIGHTS)."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels, got {x.shape[1]}")
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _factor(f: Tensor, x: Tensor) -> Tensor:
    return f.to(x.device, x.dtype).view(-1, 1, 1, 1)


def _blend(x: Tensor, other: Tensor, f: Tensor) -> Tensor:
    f = _factor(f, x)
    return (f * x + (1 - f) * other).clamp(0, 1)


def brightness(x: Tensor, f: Tensor) -> Tensor:
    """``clamp(f x)`` per image (f: (B,))."""
    return (_factor(f, x) * x).clamp(0, 1)


def contrast(x: Tensor, f: Tensor) -> Tensor:
    """``clamp(f x + (1 - f) mean(gray(x)))`` per image."""
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def saturation(x: Tensor, f: Tensor) -> Tensor:
    """``clamp(f x + (1 - f) gray(x))`` per pixel; one-channel images are returned unchanged."""
    return x if x.shape[1] == 1 else _blend(x, grayscale(x), f)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV, each in [0, 1] (hue as a fraction of the circle; 0 for grays)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(dim=1)
    lo, _ = x.min(dim=1)
    span = v - lo
    gray = span == 0
    safe = torch.where(gray, torch.ones_like(span), span)
    s = torch.where(v > 0, span / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    # hue sector by the largest channel (ties: red, then green), in units of 60 degrees
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(gray, torch.zeros_like(h), torch.remainder(h / 6, 1.0))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv` (hue taken mod 1)."""
    h, s, v = hsv.unbind(1)
    h6 = torch.remainder(h, 1.0) * 6
    sector = torch.floor(h6).clamp(0, 5)
    f = h6 - sector
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    k = sector.long()
    # (r, g, b) per sector 0..5: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    table = torch.stack([
        torch.stack([v, q, p, p, t, v]), torch.stack([t, v, v, q, p, p]), torch.stack([p, p, t, v, v, q]),
    ])  # (3 channels, 6 sectors, B, H, W)
    idx = k.unsqueeze(0).unsqueeze(0).expand(3, 1, *k.shape)
    return table.gather(1, idx).squeeze(1).transpose(0, 1).clamp(0, 1)


def hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the hue by ``f`` (fractions of the circle, per image); one-channel images unchanged."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + f.to(x.device, x.dtype).view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1))


_FUNCS = (brightness, contrast, saturation, hue)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, on: Tensor) -> Tensor:
    """Images ``x`` (B, C, H, W) in [0, 1] with ``factors`` (B, 4) = (brightness, contrast, saturation,
    hue) applied in each row's ``order`` (B, 4) permutation of 0..3, where ``on`` (B,) is true; the
    other rows are returned unchanged."""
    if not x.is_floating_point():
        raise TypeError(f"colour jitter needs floating-point images in [0, 1], got {x.dtype}")
    b = x.shape[0]
    if factors.shape != (b, 4) or order.shape != (b, 4) or on.shape != (b,):
        raise ValueError(f"jitter parameters for {b} images: factors (B, 4), order (B, 4), on (B,); got "
                         f"{tuple(factors.shape)}, {tuple(order.shape)}, {tuple(on.shape)}")
    on = on.to(x.device)
    if not bool(on.any()):
        return x
    sel = on.nonzero().flatten()
    y = x[sel]
    fac, ordr = factors.to(x.device)[sel], order.to(x.device)[sel]
    for k in range(4):
        for op, func in enumerate(_FUNCS):
            rows = (ordr[:, k] == op).nonzero().flatten()
            if rows.numel():
                y = y.index_copy(0, rows, func(y[rows], fac[rows, op]))
    out = x.clone()
    out[sel] = y
    return out


def random_grayscale(x: Tensor, gray: Tensor) -> Tensor:
    """Rows with ``gray`` (B,) true replaced by their luma in every channel (torchvision's
    ``RandomGrayscale``: the output keeps the input's channel count)."""
    gray = gray.to(x.device)
    if x.shape[1] == 1 or not bool(gray.any()):
        return x
    sel = gray.nonzero().flatten()
    out = x.clone()
    out[sel] = grayscale(x[sel]).expand(-1, x.shape[1], -1, -1).to(x.dtype)
    return out
