"""Mixup and CutMix (pigeon.data.mix): the arithmetic on hand-made params, the draws, and training with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import pigeon
from pigeon.data.mix import MixParams, mix, mix_params
from pigeon.engine import train as train_mod
from pigeon.errors import ConfigError


def _batch(n: int = 4, h: int = 6, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n * 2 * h * w, dtype=torch.float32).reshape(n, 2, h, w)
    return x, torch.tensor([0, 1, 2, 1][:n])


def test_off_draws_nothing() -> None:
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    assert mix_params(8, 8, 0.0, 0.0, gen) is None
    assert torch.equal(gen.get_state(), before)  # a run without mixing draws what it drew before mixing existed


def test_mixup_blends_images_and_labels_with_the_mirrored_partner() -> None:
    x, y = _batch()
    x_before = x.clone()
    mixed, target = mix(x, y, 3, MixParams(0.7, None))
    torch.testing.assert_close(mixed[0], 0.7 * x[0] + 0.3 * x[3])
    torch.testing.assert_close(mixed[1], 0.7 * x[1] + 0.3 * x[2])
    torch.testing.assert_close(target[0], torch.tensor([0.7, 0.3, 0.0]))  # own 0, partner 1
    torch.testing.assert_close(target[1], torch.tensor([0.0, 0.7, 0.3]))  # own 1, partner 2
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    assert torch.equal(x, x_before) and mixed.dtype == x.dtype


def test_cutmix_pastes_the_box_from_the_partner_and_weights_labels_by_area() -> None:
    x, y = _batch()
    mixed, target = mix(x, y, 3, MixParams(1 - 6 / 30, (1, 2, 4, 4)))  # a 3x2 box of a 6x5 image
    inside = torch.zeros(6, 5, dtype=torch.bool)
    inside[1:4, 2:4] = True
    for i, partner in enumerate((3, 2, 1, 0)):
        assert torch.equal(mixed[i][:, inside], x[partner][:, inside])
        assert torch.equal(mixed[i][:, ~inside], x[i][:, ~inside])
    torch.testing.assert_close(target[0], torch.tensor([0.8, 0.2, 0.0]))


def test_cutmix_lam_is_the_share_left_uncovered_even_when_the_box_is_clipped() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        p = mix_params(7, 9, 0.0, 1.0, gen)
        assert p is not None and p.box is not None
        top, left, bottom, right = p.box
        assert 0 <= top <= bottom <= 7 and 0 <= left <= right <= 9
        assert p.lam == pytest.approx(1 - (bottom - top) * (right - left) / 63)


def test_draws_are_reproducible_and_both_kinds_appear_when_both_are_on() -> None:
    def draws(seed: int) -> list[MixParams | None]:
        gen = torch.Generator().manual_seed(seed)
        return [mix_params(8, 8, 0.2, 1.0, gen) for _ in range(400)]

    first = draws(0)
    assert first == draws(0) and first != draws(1)
    cutmix = sum(p is not None and p.box is not None for p in first)
    assert 150 < cutmix < 250  # even odds
    lams = torch.tensor([p.lam for p in first if p is not None and p.box is None])
    # Beta(0.2, 0.2) piles up near 0 and 1: most draws are far from 0.5
    assert ((lams < 0.1) | (lams > 0.9)).float().mean() > 0.5 and 0 <= lams.min() and lams.max() <= 1


@pytest.mark.parametrize("option", ["mixup", "cutmix"])
def test_a_negative_alpha_is_refused_by_name(option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        pigeon.train("digits", **{option: -0.2})


def test_training_with_both_learns_resumes_exactly_and_uses_soft_targets(tmp_path: Path, cache_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    options: dict[str, Any] = {"epochs": 2, "batch": 128, "mixup": 0.2, "cutmix": 1.0, "plots": False,
                               "calibrate": False, "verbose": False, "deterministic": True,
                               "cache_dir": str(cache_dir)}
    real_step, seen = train_mod.train_step, []

    def step(model: Any, x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(y.ndim)
        if len(seen) == 12:
            raise KeyboardInterrupt  # mid epoch 2 of 9 steps each
        return real_step(model, x, y, *args, **kwargs)

    whole = pigeon.train("digits", project=str(tmp_path), name="whole", **options)
    assert whole.test is not None and whole.test["top1"] > 0.3  # chance is 0.1
    monkeypatch.setattr(train_mod, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        pigeon.train("digits", project=str(tmp_path), name="cut", **options)
    assert set(seen) == {2}  # every step got [N, classes] soft targets
    monkeypatch.setattr(train_mod, "train_step", real_step)
    pigeon.train(resume=str(tmp_path / "cut"), verbose=False)
    a = load_file(str(tmp_path / "whole" / "weights" / "last.safetensors"))
    b = load_file(str(tmp_path / "cut" / "weights" / "last.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
