"""Mixup and CutMix: batched, on-device mixing of image pairs and of their labels.

Mixup blends two whole images, x = lam * a + (1 - lam) * b; CutMix pastes a box of b into a, and lam becomes
the share of a that is left. Either way the target is lam of a's label plus (1 - lam) of b's, so the loss is a
cross-entropy against soft targets. lam is drawn from Beta(alpha, alpha) once per batch; each image is paired
with its mirror in the batch order (i with N-1-i), which the shuffled order already makes a random pair.

As in augment.py, `mix_params` draws every random number from the explicit CPU generator and `mix` does the
arithmetic, so a run with mixing is as reproducible, and as exactly resumable, as one without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MixParams:
    lam: float  # the weight of each image's own label; for CutMix, the share of the image not covered
    box: tuple[int, int, int, int] | None  # CutMix's (top, left, bottom, right) in pixels; None for mixup


def mix_params(h: int, w: int, mixup: float, cutmix: float, generator: torch.Generator) -> MixParams | None:
    """One batch's mixing, or None when both are off (then no random number is drawn, so a run without mixing
    draws exactly what it drew before mixing existed).

    `mixup` and `cutmix` are the Beta distributions' alpha (0: off). With both on, each batch is one or the
    other at even odds.
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand(1, generator=generator) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    # torch draws Beta variates only from its global generator; a seed taken from ours keeps the run's one
    # stream of random numbers (saved in the checkpoint) the only source.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    if not use_cutmix:
        return MixParams(lam, None)
    side = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(h * side), round(w * side)
    cy, cx = (int(v) for v in torch.randint(0, 2**31, (2,), generator=generator))
    cy, cx = cy % h, cx % w  # the box's centre, anywhere in the image; the box is clipped at the edges
    top, bottom = max(0, cy - cut_h // 2), min(h, cy - cut_h // 2 + cut_h)
    left, right = max(0, cx - cut_w // 2), min(w, cx - cut_w // 2 + cut_w)
    covered = (bottom - top) * (right - left) / (h * w)
    return MixParams(1.0 - covered, (top, left, bottom, right))


def mix(x: Tensor, labels: Tensor, num_classes: int, params: MixParams) -> tuple[Tensor, Tensor]:
    """([N, C, H, W] float images, [N] int labels or [N, K] multi-hot rows) -> (mixed images, [N, num_classes]
    soft targets).

    Never writes to its inputs; keeps dtype and device.
    """
    partner = x.flip(0)
    if params.box is None:
        mixed = params.lam * x + (1.0 - params.lam) * partner
    else:
        top, left, bottom, right = params.box
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
    own = (labels if labels.ndim == 2 else F.one_hot(labels, num_classes)).to(x.dtype)  # multi-hot rows as they are
    return mixed, params.lam * own + (1.0 - params.lam) * own.flip(0)
