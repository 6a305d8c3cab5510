"""Learning-rate schedules as pure functions of the step: easy to test on plain numbers."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, kind: str = "onecycle",
          final_fraction: float = 0.0) -> float:
    """Linear warmup from 0 to base_lr, then decay to final_fraction * base_lr at total_steps.

    onecycle decays linearly (a triangle), cosine follows half a cosine wave.
    """
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    if kind not in ("onecycle", "cosine"):
        raise ValueError(f"unknown schedule {kind!r}; choose onecycle or cosine")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "onecycle":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (final_fraction + (1.0 - final_fraction) * shape)


def ema_decay_for(total_steps: int) -> float:
    """An EMA horizon of a tenth of training (at least 10 steps): long enough to smooth, short enough to follow."""
    return 1.0 - 1.0 / max(10.0, total_steps / 10.0)
