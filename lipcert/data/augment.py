"""Batched data augmentation on the tensors' device: random crop (zero pad + crop) and horizontal flip.

The random parameters are drawn separately from applying them (:meth:`Augmenter.sample` /
:meth:`Augmenter.apply`): the training loop draws the parameters of a whole epoch (or global batch)
from one seeded generator and then applies each batch's rows, so N processes under torchrun see
exactly the augmentation one process would, and a resumed run reproduces an uninterrupted one.

Random crop as in 000 Appendix B (padding 1 for MNIST, 3 for CIFAR-10): zero-pad by ``padding`` on
every side, crop back to H x W at a uniformly random offset; equivalently shift the image by
(dy, dx) in [-padding, padding]^2 with zero fill: ``out[i, j] = x[i + dy, j + dx]`` (0 outside).
Then, with probability 1/2, flip left-right. One gather per batch, no Python loop over samples.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AugParams:
    """Per-sample augmentation parameters.

    shifts: (n, 2) int64, (dy, dx) in [-padding, padding]; crop offset in the padded image is
        ``padding + shift``.
    flips: (n,) bool, flip left-right after the crop.
    """

    shifts: Tensor
    flips: Tensor

    def __post_init__(self) -> None:
        if self.shifts.dim() != 2 or self.shifts.shape[1] != 2 or self.shifts.dtype != torch.int64:
            raise ValueError(f"shifts must be int64 of shape (n, 2), got {self.shifts.dtype} "
                             f"{tuple(self.shifts.shape)}")
        if self.flips.shape != (self.shifts.shape[0],) or self.flips.dtype != torch.bool:
            raise ValueError(f"flips must be bool of shape ({self.shifts.shape[0]},), got "
                             f"{self.flips.dtype} {tuple(self.flips.shape)}")

    def __len__(self) -> int:
        return self.shifts.shape[0]

    def index(self, idx: slice | Tensor | list[int]) -> AugParams:
        """Rows ``idx`` (a slice, an index tensor/list or a bool mask), e.g. one batch of an epoch."""
        if isinstance(idx, numbers.Integral):
            idx = int(idx)
            idx = slice(idx, idx + 1 if idx != -1 else None)
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.int64)
        if isinstance(idx, Tensor):
            idx = idx.to(self.shifts.device)
        return AugParams(self.shifts[idx], self.flips[idx])

    __getitem__ = index

    def to(self, device: torch.device | str) -> AugParams:
        """The same parameters on ``device``."""
        return AugParams(self.shifts.to(device), self.flips.to(device))


class Augmenter:
    """Random crop with zero padding ``padding`` and (if ``hflip``) random horizontal flips, batched.

    ``sample(n, generator)`` draws parameters on the generator's device, always consuming the same
    amount of generator state for a given ``n`` (shifts first, then flips), whatever the settings;
    ``apply(x, params)`` works on any device and dtype and is deterministic. Draw from a *CPU*
    generator when runs on different devices must agree (CPU and CUDA generators give different
    streams); ``apply`` moves the (small) parameter tensors to the data's device.
    """

    def __init__(self, padding: int = 0, hflip: bool = False) -> None:
        if int(padding) != padding or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)
        self.hflip = bool(hflip)

    def __repr__(self) -> str:
        return f"Augmenter(padding={self.padding}, hflip={self.hflip})"

    @property
    def is_identity(self) -> bool:
        return self.padding == 0 and not self.hflip

    def sample(self, n: int, generator: torch.Generator | None = None) -> AugParams:
        """Random parameters for ``n`` samples from ``generator`` (on its device)."""
        device = generator.device if generator is not None else torch.device("cpu")
        p = self.padding
        shifts = torch.randint(-p, p + 1, (n, 2), generator=generator, device=device, dtype=torch.int64)
        flips = torch.rand(n, generator=generator, device=device) < 0.5
        if not self.hflip:
            flips = torch.zeros_like(flips)
        return AugParams(shifts, flips)

    def apply(self, x: Tensor, params: AugParams) -> Tensor:
        """Augment a batch ``x`` (B, C, H, W) with ``params`` (B rows); returns a new tensor."""
        return augment(x, params)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample parameters for ``x`` and apply them (convenience for single-process use)."""
        return self.apply(x, self.sample(x.shape[0], generator))


def augment(x: Tensor, params: AugParams) -> Tensor:
    """``out[b, c, i, j] = x[b, c, i + dy_b, j' + dx_b]`` (0 outside), ``j' = W-1-j`` if flipped else ``j``."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if len(params) != b:
        raise ValueError(f"{len(params)} augmentation parameter rows for a batch of {b}")
    shifts = params.shifts.to(x.device, non_blocking=True)
    flips = params.flips.to(x.device, non_blocking=True)
    rows = torch.arange(h, device=x.device).unsqueeze(0) + shifts[:, :1]  # (B, H)
    cols_out = torch.arange(w, device=x.device).unsqueeze(0).expand(b, w)  # (B, W)
    cols = torch.where(flips.unsqueeze(1), w - 1 - cols_out, cols_out) + shifts[:, 1:]  # (B, W)
    valid = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1)  # (B, H, W)
    flat = rows.clamp(0, h - 1).unsqueeze(2) * w + cols.clamp(0, w - 1).unsqueeze(1)  # (B, H, W)
    out = x.reshape(b, c, h * w).gather(2, flat.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
    return out.masked_fill(~valid.unsqueeze(1), 0)
