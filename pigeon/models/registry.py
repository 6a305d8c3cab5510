"""Model registry: a plain dict of builders, filled by a decorator that refuses duplicate names."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pigeon.errors import ConfigError, did_you_mean

Builder = Callable[..., nn.Module]
MODELS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = builder
        return builder

    return add


def create_model(name: str, *, num_classes: int, in_chans: int, imgsz: int) -> nn.Module:
    """Build a registered model. Every model has forward_features, forward_head and reset_classifier."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, MODELS)}; "
                          f"choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_chans=in_chans, imgsz=imgsz)


def list_models() -> list[str]:
    return sorted(MODELS)
