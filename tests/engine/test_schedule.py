"""Learning-rate schedules are pure functions of the step: checked on plain numbers."""

from __future__ import annotations

import pytest

from pigeon.engine.schedule import ema_decay_for, lr_at

KINDS = ("onecycle", "cosine")


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_is_linear_and_reaches_base_lr(kind: str) -> None:
    lrs = [lr_at(step, 100, 5, 0.4, kind) for step in range(5)]
    assert lrs == pytest.approx([0.08, 0.16, 0.24, 0.32, 0.4])
    assert lrs[-1] == 0.4  # the peak is exactly base_lr
    assert lr_at(5, 100, 5, 0.4, kind) == 0.4  # the first step after warmup starts the decay at the peak


@pytest.mark.parametrize("kind", KINDS)
def test_no_warmup_starts_at_base_lr(kind: str) -> None:
    assert lr_at(0, 10, 0, 0.1, kind) == 0.1


@pytest.mark.parametrize("final_fraction", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("kind", KINDS)
def test_decay_ends_at_final_fraction(kind: str, final_fraction: float) -> None:
    assert lr_at(100, 100, 10, 2.0, kind, final_fraction) == pytest.approx(2.0 * final_fraction)
    # Past the end it stays there instead of turning back up.
    assert lr_at(150, 100, 10, 2.0, kind, final_fraction) == pytest.approx(2.0 * final_fraction)


def test_onecycle_decays_linearly() -> None:
    lrs = [lr_at(step, 110, 10, 1.0, "onecycle") for step in range(10, 111)]
    assert lrs[50] == pytest.approx(0.5)
    steps = [a - b for a, b in zip(lrs, lrs[1:])]
    assert steps == pytest.approx([0.01] * 100)


@pytest.mark.parametrize(("final_fraction", "expected"), [(0.0, 0.5), (0.1, 0.55)])
def test_cosine_midpoint_is_half_way(final_fraction: float, expected: float) -> None:
    assert lr_at(50, 100, 0, 1.0, "cosine", final_fraction) == pytest.approx(expected)
    # and a quarter of the way it is at (1 + cos(pi/4)) / 2 of the span
    assert lr_at(25, 100, 0, 1.0, "cosine") == pytest.approx(0.5 * (1 + 2**-0.5))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("total", "warmup"), [(100, 0), (100, 10), (7, 3), (1, 0)])
def test_monotone_decay_after_warmup(kind: str, total: int, warmup: int) -> None:
    lrs = [lr_at(step, total, warmup, 0.3, kind, 0.01) for step in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] == pytest.approx(0.3)
    assert min(lrs) >= 0.3 * 0.01 - 1e-12


def test_bad_kind_raises_with_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'linear'; choose onecycle or cosine"):
        lr_at(50, 100, 10, 0.1, "linear")


def test_nonpositive_total_raises() -> None:
    with pytest.raises(ValueError, match="total_steps must be positive"):
        lr_at(0, 0, 0, 0.1)


@pytest.mark.parametrize(("total", "expected"), [(1, 0.9), (50, 0.9), (100, 0.9), (1000, 0.99), (20_000, 0.9995)])
def test_ema_decay_for(total: int, expected: float) -> None:
    assert ema_decay_for(total) == pytest.approx(expected)
