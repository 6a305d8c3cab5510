"""Exponential moving average of a model's weights and BatchNorm statistics."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Early on the average would be dominated by the random initialisation: ramp the decay up.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = model.state_dict()
        for name, shadow in self.module.state_dict().items():
            if shadow.dtype.is_floating_point:
                shadow.lerp_(live[name].detach(), 1.0 - decay)
            else:
                shadow.copy_(live[name])

    def state_dict(self) -> dict[str, object]:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.module.load_state_dict(state["module"])  # type: ignore[arg-type]
        self.decay = float(state["decay"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
