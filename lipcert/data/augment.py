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

EMAReport's augmentations (App. C.3, Table 7), by name in :data:`STRENGTHS` (``data.augment``):
WAUG = random crop + flip (the settings above); MAUG = WAUG + ``RandomApply(ColorJitter(0.4, 0.4,
0.4, 0.1), p=0.8)`` + ``RandomGrayscale(p=0.2)`` (the values in the EMAReport code's ``dataset.py``,
where they are commented out); SAUG = ``RandomResizedCrop`` (torchvision's default scale (0.08, 1)
and ratio (3/4, 4/3): neither the report nor its code gives others) + flip + the same colour
operations. Order: resized crop, crop, flip, affine, colour jitter, grayscale (lipcert/data/color.py,
lipcert/data/resized_crop.py). Their random numbers are drawn after the crop / flip / affine ones,
for every setting, so turning them on or off changes none of the other parameters.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import color
from . import resized_crop as rrc

#: random-crop padding: zeros, or the nearest border pixel (torchvision's ``padding_mode='edge'``)
PAD_MODES = ("zero", "edge")

#: EMAReport App. C.3 colour settings (its code's ``dataset.py``): ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8
JITTER = (0.4, 0.4, 0.4, 0.1)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
#: EMAReport Table 7 by name: the Augmenter options each adds to the crop / flip settings
STRENGTHS: dict[str, dict] = {
    "waug": {},
    "maug": {"jitter": JITTER, "jitter_p": JITTER_P, "grayscale_p": GRAYSCALE_P},
    "saug": {"resized_crop": True, "jitter": JITTER, "jitter_p": JITTER_P, "grayscale_p": GRAYSCALE_P},
}


def augment_strength(name: str) -> dict:
    """The :class:`Augmenter` options of EMAReport's WAUG / MAUG / SAUG (``data.augment``)."""
    try:
        return dict(STRENGTHS[name])
    except KeyError:
        raise ValueError(f"unknown augmentation {name!r}; use one of {sorted(STRENGTHS)}") from None


@dataclass(frozen=True)
class AugParams:
    """Per-sample augmentation parameters.

    shifts: (n, 2) int64, (dy, dx) in [-padding, padding]; crop offset in the padded image is
        ``padding + shift``.
    flips: (n,) bool, flip left-right after the crop.
    angles: (n,) float, rotation in degrees after the flip (None = 0).
    moves: (n, 2) float, translation after the rotation as fractions (right of W, down of H),
        rounded to whole pixels when applied (None = 0).
    crop_u: (n, rrc.NUM_UNIFORMS) float uniforms of a random resized crop, before the crop (None = off);
        the box depends on the image size, so it is made when applied (:func:`resized_crop.boxes`).
    jitter: (n, 4) float brightness, contrast, saturation and hue factors (None = no colour jitter).
    jitter_order: (n, 4) int64, the order of the four (a permutation of 0..3 per row).
    jitter_on: (n,) bool, rows that are jittered (``RandomApply``).
    gray: (n,) bool, rows turned gray after the jitter (None = none).
    """

    shifts: Tensor
    flips: Tensor
    angles: Tensor | None = None
    moves: Tensor | None = None
    crop_u: Tensor | None = None
    jitter: Tensor | None = None
    jitter_order: Tensor | None = None
    jitter_on: Tensor | None = None
    gray: Tensor | None = None
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)

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
        if self.crop_u is not None and (self.crop_u.shape != (n, rrc.NUM_UNIFORMS) or not self.crop_u.is_floating_point()):
            raise ValueError(f"crop_u must be float of shape ({n}, {rrc.NUM_UNIFORMS}), got {tuple(self.crop_u.shape)}")
        jit = (self.jitter, self.jitter_order, self.jitter_on)
        if any(t is not None for t in jit):
            if any(t is None for t in jit):
                raise ValueError("jitter, jitter_order and jitter_on come together")
            if (self.jitter.shape != (n, 4) or not self.jitter.is_floating_point() or self.jitter_order.shape != (n, 4)
                    or self.jitter_order.dtype != torch.int64 or self.jitter_on.shape != (n,) or self.jitter_on.dtype != torch.bool):
                raise ValueError(f"jitter (float ({n}, 4)), jitter_order (int64 ({n}, 4)), jitter_on (bool ({n},)); got "
                                 f"{self.jitter.dtype} {tuple(self.jitter.shape)}, {self.jitter_order.dtype} "
                                 f"{tuple(self.jitter_order.shape)}, {self.jitter_on.dtype} {tuple(self.jitter_on.shape)}")
        if self.gray is not None and (self.gray.shape != (n,) or self.gray.dtype != torch.bool):
            raise ValueError(f"gray must be bool of shape ({n},), got {self.gray.dtype} {tuple(self.gray.shape)}")

    def _map(self, fn) -> AugParams:
        """The same parameters with ``fn`` applied to every tensor field."""
        tensors = {f: getattr(self, f) for f in _TENSOR_FIELDS}
        return AugParams(**{f: None if t is None else fn(t) for f, t in tensors.items()},
                         rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio)

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
        return self._map(lambda t: t[idx.to(t.device) if isinstance(idx, Tensor) else idx])

    __getitem__ = index

    def to(self, device: torch.device | str) -> AugParams:
        """The same parameters on ``device``."""
        return self._map(lambda t: t.to(device))


_TENSOR_FIELDS = ("shifts", "flips", "angles", "moves", "crop_u", "jitter", "jitter_order", "jitter_on", "gray")


class Augmenter:
    """Random crop with zero (or ``pad_mode="edge"``: border) padding ``padding``, (if ``hflip``) random horizontal flips and (if
    ``degrees`` or ``translate``) a random affine map with ``fill`` outside, batched.

    EMAReport's stronger augmentations (:data:`STRENGTHS`): ``resized_crop`` (with ``rrc_scale``,
    ``rrc_ratio``; instead of the padded crop, so ``padding`` must be 0), ``jitter`` = (brightness,
    contrast, saturation, hue) strengths of a colour jitter applied with probability ``jitter_p``
    (factors uniform in [max(0, 1 - a), 1 + a], hue in [-a, a]), and grayscale with probability
    ``grayscale_p``.

    ``sample(n, generator)`` draws parameters on the generator's device, always consuming the same
    amount of generator state for a given ``n`` (shifts, flips, angles, moves, then the resized-crop,
    jitter and grayscale draws), whatever the settings; ``apply(x, params)`` works on any device and
    dtype (floating point for the colour operations and the resized crop) and is deterministic. Draw from a *CPU*
    generator when runs on different devices must agree (CPU and CUDA generators give different
    streams); ``apply`` moves the (small) parameter tensors to the data's device.
    """

    def __init__(self, padding: int = 0, hflip: bool = False, degrees: float = 0.0, translate: float = 0.0,
                 fill: float = 0.0, pad_mode: str = "zero", resized_crop: bool = False,
                 rrc_scale: tuple[float, float] = (0.08, 1.0), rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 jitter: tuple[float, float, float, float] | None = None, jitter_p: float = 1.0,
                 grayscale_p: float = 0.0) -> None:
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
        self.resized_crop = bool(resized_crop)
        if self.resized_crop and self.padding:
            raise ValueError("the random resized crop replaces the padded crop: use padding 0 with resized_crop")
        self.rrc_scale = (float(rrc_scale[0]), float(rrc_scale[1]))
        self.rrc_ratio = (float(rrc_ratio[0]), float(rrc_ratio[1]))
        if not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ValueError(f"rrc_scale must satisfy 0 < lo <= hi <= 1, got {rrc_scale!r}")
        if not 0 < self.rrc_ratio[0] <= self.rrc_ratio[1]:
            raise ValueError(f"rrc_ratio must satisfy 0 < lo <= hi, got {rrc_ratio!r}")
        if jitter is not None:
            jitter = tuple(float(a) for a in jitter)
            if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
                raise ValueError(f"jitter must be 4 strengths >= 0 (brightness, contrast, saturation, hue <= 0.5), got {jitter!r}")
        self.jitter = jitter
        for name, prob in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p)):
            if not 0 <= prob <= 1:
                raise ValueError(f"{name} must be a probability, got {prob!r}")
        self.jitter_p, self.grayscale_p = float(jitter_p), float(grayscale_p)

    def __repr__(self) -> str:
        aff = f", degrees={self.degrees}, translate={self.translate}, fill={self.fill}" if self.affine else ""
        mode = f", pad_mode={self.pad_mode!r}" if self.pad_mode != "zero" else ""
        extra = f", resized_crop=True, rrc_scale={self.rrc_scale}, rrc_ratio={self.rrc_ratio}" if self.resized_crop else ""
        if self.jitter is not None:
            extra += f", jitter={self.jitter}, jitter_p={self.jitter_p}"
        if self.grayscale_p:
            extra += f", grayscale_p={self.grayscale_p}"
        return f"Augmenter(padding={self.padding}, hflip={self.hflip}{mode}{aff}{extra})"

    @property
    def affine(self) -> bool:
        return self.degrees > 0 or self.translate > 0

    @property
    def is_identity(self) -> bool:
        return (self.padding == 0 and not self.hflip and not self.affine and not self.resized_crop
                and (self.jitter is None or self.jitter_p == 0) and self.grayscale_p == 0)

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
        # EMAReport's MAUG / SAUG draws, always made (after the others): same generator use for every setting
        crop_u = torch.rand(n, rrc.NUM_UNIFORMS, generator=generator, device=device, dtype=torch.float64)
        jit_u = torch.rand(n, 4, generator=generator, device=device, dtype=torch.float64)
        order = torch.rand(n, 4, generator=generator, device=device).argsort(dim=1)
        jit_on = torch.rand(n, generator=generator, device=device) < self.jitter_p
        gray = torch.rand(n, generator=generator, device=device) < self.grayscale_p
        jitter = None
        if self.jitter is not None:
            lo = torch.tensor([max(0.0, 1 - a) for a in self.jitter[:3]] + [-self.jitter[3]], dtype=torch.float64, device=device)
            hi = torch.tensor([1 + a for a in self.jitter[:3]] + [self.jitter[3]], dtype=torch.float64, device=device)
            jitter = lo + (hi - lo) * jit_u
        return AugParams(shifts, flips, angles, moves,
                         crop_u=crop_u if self.resized_crop else None,
                         jitter=jitter, jitter_order=None if jitter is None else order,
                         jitter_on=None if jitter is None else jit_on,
                         gray=gray if self.grayscale_p else None,
                         rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio)

    def apply(self, x: Tensor, params: AugParams) -> Tensor:
        """Augment a batch ``x`` (B, C, H, W) with ``params`` (B rows); returns a new tensor."""
        return augment(x, params, self.fill, self.pad_mode)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample parameters for ``x`` and apply them (convenience for single-process use)."""
        return self.apply(x, self.sample(x.shape[0], generator))


def augment(x: Tensor, params: AugParams, fill: float = 0.0, pad_mode: str = "zero") -> Tensor:
    """The params' resized crop (if any), crop and flip (:func:`crop_flip`), affine map
    (:func:`affine`), colour jitter and grayscale (lipcert/data/color.py), in this order."""
    if params.crop_u is not None:
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
        x = rrc.resized_crop(x, rrc.boxes(params.crop_u, x.shape[2], x.shape[3], params.rrc_scale, params.rrc_ratio))
    out = crop_flip(x, params, pad_mode)
    if params.angles is not None or params.moves is not None:
        out = affine(out, params.angles, params.moves, fill)
    if params.jitter is not None:
        out = color.color_jitter(out, params.jitter, params.jitter_order, params.jitter_on)
    if params.gray is not None:
        out = color.random_grayscale(out, params.gray)
    return out


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
