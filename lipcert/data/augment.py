"""Batched data augmentation on the tensors' device: random crop (zero pad + crop), horizontal flip
and random affine (rotation + whole-pixel translation).

The random parameters are drawn separately from applying them (:meth:`Augmenter.sample` /
:meth:`Augmenter.apply`): the training loop draws the parameters of a whole epoch (or global batch)
from one seeded generator and then applies each batch's rows, so N processes under torchrun see
exactly the augmentation one process would, and a resumed run reproduces an uninterrupted one.

Random crop as in Zhang22 Appendix B (padding 1 for MNIST, 3 for CIFAR-10): zero-pad by ``padding`` on
every side, crop back to H x W at a uniformly random offset; equivalently shift the image by
(dy, dx) in [-padding, padding]^2 with zero fill: ``out[i, j] = x[i + dy, j + dx]`` (0 outside).
``pad_mode="edge"`` repeats the border pixels instead (``out[i, j] = x[clamp(i + dy), clamp(j + dx)]``,
torchvision's ``RandomCrop(padding_mode='edge')``, the Zhang22 authors' v2 code). Then, with
probability 1/2, flip left-right. One gather per batch, no Python loop over samples.

Random affine as torchvision's ``RandomAffine(degrees, translate)`` (the CIFAR augmentation of Fazlyab23's
authors: flip, then 10 degrees and 0.1): rotate by an angle uniform in [-degrees, degrees]
(counter-clockwise as displayed, about the image centre), then translate by whole pixels
``round(u * W)`` right and ``round(v * H)`` down, u, v uniform in [-translate, translate]; nearest
neighbour, ``fill`` outside the image. One ``affine_grid`` / ``grid_sample`` per batch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: random-crop padding: zeros, or the nearest border pixel (torchvision's ``padding_mode='edge'``)
PAD_MODES = ("zero", "edge")


@dataclass(frozen=True)
class AugParams:
    """Per-sample augmentation parameters.

    shifts: (n, 2) int64, (dy, dx) in [-padding, padding]; crop offset in the padded image is
        ``padding + shift``.
    flips: (n,) bool, flip left-right after the crop.
    angles: (n,) float, rotation in degrees after the flip (None = 0).
    moves: (n, 2) float, translation after the rotation as fractions (right of W, down of H),
        rounded to whole pixels when applied (None = 0).
    """

    shifts: Tensor
    flips: Tensor
    angles: Tensor | None = None
    moves: Tensor | None = None

    def __post_init__(self) -> None:
        if self.shifts.dim() != 2 or self.shifts.shape[1] != 2 or self.shifts.dtype != torch.int64:
            raise ValueError(f"shifts must be int64 of shape (n, 2), got {self.shifts.dtype} "
                             f"{tuple(self.shifts.shape)}")
        if self.flips.shape != (self.shifts.shape[0],) or self.flips.dtype != torch.bool:
            raise ValueError(f"flips must be bool of shape ({self.shifts.shape[0]},), got "
                             f"{self.flips.dtype} {tuple(self.flips.shape)}")
        n = self.shifts.shape[0]
        if self.angles is not None and (self.angles.shape != (n,) or not self.angles.is_floating_point()):
            raise ValueError(f"angles must be float of shape ({n},), got {self.angles.dtype} {tuple(self.angles.shape)}")
        if self.moves is not None and (self.moves.shape != (n, 2) or not self.moves.is_floating_point()):
            raise ValueError(f"moves must be float of shape ({n}, 2), got {self.moves.dtype} {tuple(self.moves.shape)}")

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
        return AugParams(self.shifts[idx], self.flips[idx], _opt(self.angles, idx), _opt(self.moves, idx))

    __getitem__ = index

    def to(self, device: torch.device | str) -> AugParams:
        """The same parameters on ``device``."""
        return AugParams(self.shifts.to(device), self.flips.to(device),
                         None if self.angles is None else self.angles.to(device),
                         None if self.moves is None else self.moves.to(device))


def _opt(t: Tensor | None, idx) -> Tensor | None:
    return None if t is None else t[idx.to(t.device) if isinstance(idx, Tensor) else idx]


class Augmenter:
    """Random crop with zero (or ``pad_mode="edge"``: border) padding ``padding``, (if ``hflip``) random horizontal flips and (if
    ``degrees`` or ``translate``) a random affine map with ``fill`` outside, batched.

    ``sample(n, generator)`` draws parameters on the generator's device, always consuming the same
    amount of generator state for a given ``n`` (shifts, flips, angles, moves), whatever the settings;
    ``apply(x, params)`` works on any device and dtype and is deterministic. Draw from a *CPU*
    generator when runs on different devices must agree (CPU and CUDA generators give different
    streams); ``apply`` moves the (small) parameter tensors to the data's device.
    """

    def __init__(self, padding: int = 0, hflip: bool = False, degrees: float = 0.0, translate: float = 0.0,
                 fill: float = 0.0, pad_mode: str = "zero") -> None:
        if int(padding) != padding or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.pad_mode = pad_mode
        if not 0 <= degrees <= 180:
            raise ValueError(f"degrees must be in [0, 180], got {degrees!r}")
        if not 0 <= translate < 1:
            raise ValueError(f"translate must be in [0, 1) (a fraction of the image side), got {translate!r}")
        self.padding = int(padding)
        self.hflip = bool(hflip)
        self.degrees, self.translate, self.fill = float(degrees), float(translate), float(fill)

    def __repr__(self) -> str:
        aff = f", degrees={self.degrees}, translate={self.translate}, fill={self.fill}" if self.affine else ""
        mode = f", pad_mode={self.pad_mode!r}" if self.pad_mode != "zero" else ""
        return f"Augmenter(padding={self.padding}, hflip={self.hflip}{mode}{aff})"

    @property
    def affine(self) -> bool:
        return self.degrees > 0 or self.translate > 0

    @property
    def is_identity(self) -> bool:
        return self.padding == 0 and not self.hflip and not self.affine

    def sample(self, n: int, generator: torch.Generator | None = None) -> AugParams:
        """Random parameters for ``n`` samples from ``generator`` (on its device)."""
        device = generator.device if generator is not None else torch.device("cpu")
        p = self.padding
        shifts = torch.randint(-p, p + 1, (n, 2), generator=generator, device=device, dtype=torch.int64)
        flips = torch.rand(n, generator=generator, device=device) < 0.5
        if not self.hflip:
            flips = torch.zeros_like(flips)
        angles = (2 * torch.rand(n, generator=generator, device=device) - 1) * self.degrees
        moves = (2 * torch.rand(n, 2, generator=generator, device=device) - 1) * self.translate
        return AugParams(shifts, flips, angles, moves)

    def apply(self, x: Tensor, params: AugParams) -> Tensor:
        """Augment a batch ``x`` (B, C, H, W) with ``params`` (B rows); returns a new tensor."""
        return augment(x, params, self.fill, self.pad_mode)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample parameters for ``x`` and apply them (convenience for single-process use)."""
        return self.apply(x, self.sample(x.shape[0], generator))


def augment(x: Tensor, params: AugParams, fill: float = 0.0, pad_mode: str = "zero") -> Tensor:
    """Crop and flip (:func:`crop_flip`), then the affine map of the params (:func:`affine`)."""
    out = crop_flip(x, params, pad_mode)
    if params.angles is None and params.moves is None:
        return out
    return affine(out, params.angles, params.moves, fill)


def affine(x: Tensor, angles: Tensor | None, moves: Tensor | None, fill: float = 0.0) -> Tensor:
    """Rotate each image by ``angles`` degrees (counter-clockwise as displayed, about its centre),
    then translate by ``round(moves * (W, H))`` whole pixels (right, down); nearest neighbour,
    ``fill`` outside. Rows without rotation and translation are returned unchanged."""
    b, c, h, w = x.shape
    ang = torch.zeros(b, device=x.device) if angles is None else angles.to(x.device, torch.float64)
    mv = torch.zeros(b, 2, device=x.device) if moves is None else moves.to(x.device, torch.float64)
    tx = torch.round(mv[:, 0].double() * w)  # pixels right
    ty = torch.round(mv[:, 1].double() * h)  # pixels down
    ang = ang.double()
    moved = (ang != 0) | (tx != 0) | (ty != 0)
    if b == 0 or not bool(moved.any()):
        return x
    rad = ang * (math.pi / 180)
    cs, sn = torch.cos(rad), torch.sin(rad)
    # output pixel p (from the centre, y down) reads the source at R(-angle) (p - t); in affine_grid's
    # normalised coordinates (x_n = 2 u / W, y_n = 2 v / H, align_corners=False):
    theta = torch.stack([
        torch.stack([cs, -sn * h / w, 2 / w * (-cs * tx + sn * ty)], 1),
        torch.stack([sn * w / h, cs, 2 / h * (-sn * tx - cs * ty)], 1),
    ], 1)  # (B, 2, 3)
    sel = moved.nonzero().flatten()
    xs = x[sel].to(torch.float64) - fill
    grid = F.affine_grid(theta[sel], [sel.numel(), c, h, w], align_corners=False)
    warped = F.grid_sample(xs, grid, mode="nearest", padding_mode="zeros", align_corners=False) + fill
    out = x.clone()
    if not x.is_floating_point():
        warped = warped.round()
    out[sel] = warped.to(x.dtype)
    return out


def crop_flip(x: Tensor, params: AugParams, pad_mode: str = "zero") -> Tensor:
    """``out[b, c, i, j] = x[b, c, i + dy_b, j' + dx_b]`` (0 outside; ``pad_mode="edge"``: indices
    clamped to the image, i.e. the nearest border pixel), ``j' = W-1-j`` if flipped else ``j``."""
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
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
    return out if pad_mode == "edge" else out.masked_fill(~valid.unsqueeze(1), 0)
