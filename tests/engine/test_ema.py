"""The EMA follows the textbook recurrence, with its early-step ramp, and survives a state_dict round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pigeon.engine.ema import EMA


def _model(value: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model[1].running_mean.fill_(value)
        model[1].num_batches_tracked.fill_(int(value))


def _reference(start: float, values: list[float], decay: float) -> float:
    shadow = start
    for t, v in enumerate(values, start=1):
        d = min(decay, (1 + t) / (10 + t))
        shadow = d * shadow + (1 - d) * v
    return shadow


def test_first_updates_follow_the_ramp() -> None:
    model = _model(0.0)
    ema = EMA(model, decay=0.9)
    _set(model, 11.0)
    ema.update(model)  # decay = min(0.9, 2/11): shadow = 0 + 9/11 * 11 = 9
    assert ema.module[0].weight[0, 0].item() == pytest.approx(9.0)
    _set(model, 21.0)
    ema.update(model)  # decay = 3/12: shadow = 0.25 * 9 + 0.75 * 21 = 18
    assert ema.module[0].weight[0, 0].item() == pytest.approx(18.0)
    assert ema.updates == 2


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.99])
def test_shadow_equals_the_analytic_average(decay: float) -> None:
    model = _model(1.0)
    ema = EMA(model, decay=decay)
    values = [float(v) for v in range(2, 42)]
    for v in values:
        _set(model, v)
        ema.update(model)
    expected = _reference(1.0, values, decay)
    for name, tensor in ema.module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert tensor.item() == int(values[-1])  # integer buffers are copied, not averaged
        elif name.endswith("running_var"):
            assert torch.allclose(tensor, torch.full_like(tensor, _reference(1.0, [1.0] * len(values), decay)))
        else:
            assert torch.allclose(tensor, torch.full_like(tensor, expected), rtol=1e-5), name
    # After the ramp the configured decay rules: 0.5 is reached at once, so the lag is about one step.
    if decay == 0.5:
        assert expected == pytest.approx(values[-1] - 1, abs=1e-6)


def test_ema_is_a_frozen_copy() -> None:
    model = _model(1.0)
    ema = EMA(model, decay=0.9)
    assert ema.module is not model
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    _set(model, 5.0)
    assert ema.module[0].weight[0, 0].item() == 1.0  # untouched until update()
    assert all(p.requires_grad for p in model.parameters())


def test_state_dict_round_trip() -> None:
    model = _model(1.0)
    ema = EMA(model, decay=0.95)
    for v in (2.0, 3.0, 4.0):
        _set(model, v)
        ema.update(model)
    state = ema.state_dict()
    assert state["decay"] == 0.95 and state["updates"] == 3

    restored = EMA(_model(-7.0), decay=0.1)
    restored.load_state_dict(state)
    assert restored.decay == 0.95 and restored.updates == 3
    for (name, a), (_, b) in zip(ema.module.state_dict().items(), restored.module.state_dict().items()):
        assert torch.equal(a, b), name

    # Both continue identically: the update count (and so the ramp) came back too.
    _set(model, 10.0)
    ema.update(model)
    restored.update(model)
    for (name, a), (_, b) in zip(ema.module.state_dict().items(), restored.module.state_dict().items()):
        assert torch.equal(a, b), name
    assert ema.module[0].weight[0, 0].item() == pytest.approx(_reference(1.0, [2.0, 3.0, 4.0, 10.0], 0.95))
