"""Batched random resized crop (torchvision's ``RandomResizedCrop``; EMAReport's SAUG, App. C.3).

Box choice as torchvision's ``RandomResizedCrop.get_params`` for an H x W image: up to 10 tries of
an area ``U(scale) H W`` and an aspect ratio ``exp(U(log ratio))``, giving ``w = round(sqrt(area
ratio))``, ``h = round(sqrt(area / ratio))``; the first try with ``0 < w <= W`` and ``0 < h <= H`` is
placed at a uniform offset (``top`` in 0..H-h, ``left`` in 0..W-w); if none fits, the central crop
with the ratio clamped to ``ratio``. The random numbers are drawn before the image size is known
(:data:`NUM_UNIFORMS` per image, :func:`boxes` turns them into boxes).

The crop is resized back to H x W bilinearly with half-pixel centres, neighbours clamped to the crop
(``F.interpolate(crop, (H, W), mode="bilinear", align_corners=False)``; the box is never larger than
the image, so this is an upsampling, where antialiasing changes nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

TRIES = 10
#: per image: TRIES area draws, TRIES log-ratio draws, top and left
NUM_UNIFORMS = 2 * TRIES + 2


def boxes(u: Tensor, h: int, w: int, scale: Sequence[float] = (0.08, 1.0),
          ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Tensor:
    """(B, 4) int64 boxes (top, left, height, width) from ``u`` (B, NUM_UNIFORMS) uniforms in [0, 1)."""
    if u.dim() != 2 or u.shape[1] != NUM_UNIFORMS:
        raise ValueError(f"expected (B, {NUM_UNIFORMS}) uniforms, got {tuple(u.shape)}")
    u = u.to(torch.float64)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[:, :TRIES])
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u[:, TRIES:2 * TRIES])
    cw = torch.round(torch.sqrt(area * aspect))
    ch = torch.round(torch.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(fits.any(1), fits.long().argmax(1), torch.full_like(fits[:, 0], -1, dtype=torch.int64))
    # the central fallback crop
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(h * max(ratio))), h
    else:
        fw, fh = w, h
    pick = first.clamp(min=0).unsqueeze(1)
    bh = torch.where(first >= 0, ch.gather(1, pick).squeeze(1), torch.full_like(first, fh, dtype=torch.float64)).long()
    bw = torch.where(first >= 0, cw.gather(1, pick).squeeze(1), torch.full_like(first, fw, dtype=torch.float64)).long()
    top = torch.floor(u[:, -2] * (h - bh + 1).double()).long().clamp(max=h - bh)
    left = torch.floor(u[:, -1] * (w - bw + 1).double()).long().clamp(max=w - bw)
    top = torch.where(first >= 0, top, (h - bh) // 2)
    left = torch.where(first >= 0, left, (w - bw) // 2)
    return torch.stack([top, left, bh, bw], 1)


def _axis(start: Tensor, size: Tensor, out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices (lower, upper) and the upper weight for ``out`` output pixels per row."""
    scale = size.to(torch.float64).unsqueeze(1) / out
    src = ((torch.arange(out, device=device, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = torch.floor(src)
    frac = src - i0
    i0 = i0.long()
    i1 = torch.minimum(i0 + 1, size.unsqueeze(1) - 1)
    return start.unsqueeze(1) + i0, start.unsqueeze(1) + i1, frac


def resized_crop(x: Tensor, box: Tensor) -> Tensor:
    """Each image of ``x`` (B, C, H, W) cropped to its ``box`` (B, 4: top, left, height, width) and
    resized bilinearly back to H x W (see the module docstring)."""
    if not x.is_floating_point():
        raise TypeError(f"resized crop needs floating-point images, got {x.dtype}")
    b, c, h, w = x.shape
    box = box.to(x.device)
    if box.shape != (b, 4):
        raise ValueError(f"expected ({b}, 4) boxes, got {tuple(box.shape)}")
    if bool(((box[:, 2] < 1) | (box[:, 3] < 1) | (box[:, 0] < 0) | (box[:, 1] < 0)
             | (box[:, 0] + box[:, 2] > h) | (box[:, 1] + box[:, 3] > w)).any()):
        raise ValueError("every box must lie inside the image")
    y0, y1, fy = _axis(box[:, 0], box[:, 2], h, x.device)  # (B, H)
    x0, x1, fx = _axis(box[:, 1], box[:, 3], w, x.device)  # (B, W)
    flat = x.reshape(b, c, h * w)

    def take(rows: Tensor, cols: Tensor) -> Tensor:
        idx = (rows.unsqueeze(2) * w + cols.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, idx).view(b, c, h, w).to(torch.float64)

    fy = fy.view(b, 1, h, 1)
    fx = fx.view(b, 1, 1, w)
    top = take(y0, x0) * (1 - fx) + take(y0, x1) * fx
    bottom = take(y1, x0) * (1 - fx) + take(y1, x1) * fx
    return (top * (1 - fy) + bottom * fy).to(x.dtype)
