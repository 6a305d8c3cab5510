"""Batched, on-device augmentation as pure functions.

Each op comes as a pair: `*_params(n, ..., generator, device)` draws every random number from an explicit
CPU generator, and a kernel `op(x, params)` does the arithmetic. Kernels take [N, C, H, W] uint8 or float
images, never write to their input, keep dtype and device, accept N=0, and treat each sample exactly as if
it were processed alone with its slice of the params. Splitting the two makes runs reproducible on any
device and lets tests drive the kernels with hand-made params.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pigeon.errors import ConfigError


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def flip_params(n: int, p: float, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """Bool mask [N]: which samples to mirror left-right."""
    return (torch.rand(n, generator=generator) < p).to(device)


def flip_lr(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def translate_params(
    n: int, max_shift: int, generator: torch.Generator, device: torch.device | str
) -> Tensor:
    """Int shifts [N, 2] as (dy, dx), each uniform in [-max_shift, max_shift]."""
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).to(device)


def translate(x: Tensor, shifts: Tensor) -> Tensor:
    """Move each image down by dy and right by dx; the uncovered area is zero (RandomCrop with padding)."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device) - shifts[:, :1]  # [N, H]: source row of each output row
    cols = torch.arange(w, device=x.device) - shifts[:, 1:]  # [N, W]
    # Gather with clamped indices, then zero whatever came from outside the source image.
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    return torch.where(inside[:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))  # uint16 too


def resized_crop_params(
    n: int,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    generator: torch.Generator,
    device: torch.device | str,
) -> Tensor:
    """Float boxes [N, 4] as (cy, cx, h, w) in normalised [0, 1] image coordinates.

    The area h*w is uniform in `scale`; w/h (in normalised units, so the pixel aspect ratio on square
    images) is log-uniform in `ratio`, then pulled into [area, 1/area] so that both sides fit in the image
    without changing the area.
    """
    area = _uniform(n, scale[0], scale[1], generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    log_r = torch.maximum(torch.minimum(log_r, -area.log()), area.log())
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    cy = h / 2 + (1 - h) * torch.rand(n, generator=generator)
    cx = w / 2 + (1 - w) * torch.rand(n, generator=generator)
    return torch.stack([cy, cx, h, w], dim=1).to(device)


def resized_crop(x: Tensor, boxes: Tensor) -> Tensor:
    """Resample each box of `boxes` (cy, cx, h, w) back to the full H x W with bilinear interpolation."""
    n, _, h, w = x.shape
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    boxes = boxes.to(compute)
    # grid_sample's coordinates run from -1 to 1 across the whole image (align_corners=False: from the outer
    # edge of the first pixel to that of the last), so an output pixel centre u maps to centre + size * u.
    # The grid is the per-sample affine map without rotation; affine_grid itself refuses N=0.
    ys = (2 * torch.arange(h, device=x.device, dtype=compute) + 1) / h - 1
    xs = (2 * torch.arange(w, device=x.device, dtype=compute) + 1) / w - 1
    cy, cx, bh, bw = (col[:, None, None] for col in boxes.unbind(1))
    grid_y = ((2 * cy - 1) + bh * ys[None, :, None]).expand(n, h, w)
    grid_x = ((2 * cx - 1) + bw * xs[None, None, :]).expand(n, h, w)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    # Border padding: a box touching the edge samples half a pixel beyond it, which should repeat the edge.
    out = F.grid_sample(x.to(compute), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if x.dtype in (torch.uint8, torch.uint16):
        return out.round_().clamp_(0, torch.iinfo(x.dtype).max).to(x.dtype)
    return out.to(x.dtype)


def erase_params(
    n: int,
    p: float,
    scale: tuple[float, float] = (0.02, 0.25),
    ratio: tuple[float, float] = (0.3, 3.3),
    *,
    h: int,
    w: int,
    generator: torch.Generator,
    device: torch.device | str,
) -> Tensor:
    """Int boxes [N, 4] as (y0, x0, y1, x1), end-exclusive; samples not erased get the empty box 0,0,0,0.

    With probability p a box covers a fraction of the image uniform in `scale`, with width/height
    log-uniform in `ratio`; sides are rounded and clipped to the image.
    """
    erased = torch.rand(n, generator=generator) < p
    area = _uniform(n, scale[0], scale[1], generator) * (h * w)
    r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator).exp()
    bh = (area / r).sqrt().round().long().clamp(1, h)
    bw = (area * r).sqrt().round().long().clamp(1, w)
    y0 = (torch.rand(n, generator=generator) * (h - bh + 1)).long()
    x0 = (torch.rand(n, generator=generator) * (w - bw + 1)).long()
    boxes = torch.stack([y0, x0, y0 + bh, x0 + bw], dim=1)
    return (boxes * erased[:, None]).to(device)


def erase(x: Tensor, boxes: Tensor, value: float = 0) -> Tensor:
    """Set the region y0 <= y < y1, x0 <= x < x1 of each image (all channels) to `value`."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_rows = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])  # [N, H]
    in_cols = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])  # [N, W]
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    # where, not masked_fill, which PyTorch lacks for uint16 (16-bit rasters)
    return torch.where(mask, torch.full((), value, dtype=x.dtype, device=x.device), x)


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment.{name}={p!r} is not a probability; use a value in [0, 1]")


@dataclass(frozen=True)
class Augment:
    """The training-time pipeline: (resized crop, translate), flip, erase, always in that order.

    `resized_crop` suits larger images; `translate` (pixels of pad-and-crop) suits small ones. When both are
    on, both are applied: the crop first, then the shift.
    """

    flip: float = 0.5
    translate: int = 2
    resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.35, 1.0)
    erase: float = 0.0

    def __post_init__(self) -> None:
        _check_probability("flip", self.flip)
        _check_probability("erase", self.erase)
        if isinstance(self.translate, bool) or not isinstance(self.translate, int) or self.translate < 0:
            raise ConfigError(
                f"augment.translate={self.translate!r} is not valid; use a whole number of pixels >= 0"
            )
        scale = tuple(self.crop_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(
                f"augment.crop_scale={self.crop_scale!r} is not valid; use (a, b) with 0 < a <= b <= 1"
            )
        # A list from a config file is accepted; store the tuple so the dataclass stays hashable.
        object.__setattr__(self, "crop_scale", scale)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(x, self.draw(len(x), x.shape[-2], x.shape[-1], generator, x.device))

    def draw(self, n: int, h: int, w: int, generator: torch.Generator, device: torch.device | str) -> Drawn:
        """Every random number for a batch of n, before any arithmetic, so that the random stream depends only
        on the config and n. Data-parallel ranks draw for the whole global batch and each applies its slice:
        the images come out as one process would have made them."""
        return Drawn(
            boxes=resized_crop_params(n, self.crop_scale, generator=generator, device=device)
            if self.resized_crop else None,
            shifts=translate_params(n, self.translate, generator, device) if self.translate else None,
            mask=flip_params(n, self.flip, generator, device) if self.flip else None,
            holes=erase_params(n, self.erase, h=h, w=w, generator=generator, device=device) if self.erase else None,
        )

    def apply(self, x: Tensor, drawn: Drawn) -> Tensor:
        if drawn.boxes is not None:
            x = resized_crop(x, drawn.boxes)
        if drawn.shifts is not None:
            x = translate(x, drawn.shifts)
        if drawn.mask is not None:
            x = flip_lr(x, drawn.mask)
        if drawn.holes is not None:
            x = erase(x, drawn.holes)
        return x


@dataclass(frozen=True)
class Drawn:
    """One batch's augmentation parameters, each [N, ...] or None when its op is off."""

    boxes: Tensor | None = None
    shifts: Tensor | None = None
    mask: Tensor | None = None
    holes: Tensor | None = None

    def __getitem__(self, rows: slice) -> Drawn:
        return Drawn(*(None if t is None else t[rows] for t in (self.boxes, self.shifts, self.mask, self.holes)))


MIRROR_HINT_RATIO = 0.8  # digits' classes measure 1.14, Fashion-MNIST's 0.44 (benchmarks/defaults.py)


def mirror_ratio(images: np.ndarray, labels: np.ndarray, max_images: int = 2000, max_classes: int = 100) -> float:
    """How far a left-right mirror moves a class's mean image, relative to the nearest other class's mean
    (median over classes). Near 0: mirrored images stay what they were (clothes, most photos); around 1 or
    more: a mirror turns an image into something else (digits, letters), and flipping as augmentation hurts."""
    pick = np.linspace(0, len(labels) - 1, min(len(labels), max_images)).astype(np.int64)
    x, y = np.asarray(images[pick]), np.asarray(labels)[pick]  # uint8: the means accumulate in float64
    classes = np.unique(y)[:max_classes]  # a median over 100 classes is plenty, and pairs grow as K^2
    means = np.stack([x[y == c].mean(0, dtype=np.float64) / 255.0 for c in classes])
    if len(means) < 2:
        return 0.0
    flat = means.reshape(len(means), -1)
    sq = (flat ** 2).sum(1)
    gaps = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * flat @ flat.T, 0.0))  # no K x K x pixels array
    np.fill_diagonal(gaps, np.inf)
    moved = np.sqrt(((means - means[..., ::-1]) ** 2).reshape(len(means), -1).sum(-1))
    return float(np.median(moved / np.maximum(gaps.min(1), 1e-6)))
