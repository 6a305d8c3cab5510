"""Model registry: a plain dict of builders, filled by a decorator that refuses duplicate names."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from pigeon.config import Size
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


def check_model_name(name: str) -> None:
    """Refuse an unknown model name before any data is read, naming the closest valid one."""
    from pigeon.models import zoo

    if zoo.is_external(name):
        zoo.check_name(name)
    elif name not in MODELS:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, MODELS)}; choose one of "
                          f"{', '.join(sorted(MODELS))}, or timm:<name> / tv:<name> (see `pigeon models`)")


def create_model(name: str, *, num_classes: int, in_chans: int, imgsz: Size) -> nn.Module:
    """Build a model with random weights: one of pigeon's own, or timm:<name> / tv:<name>.

    Every model maps [N, in_chans, H, W] images (imgsz: a square's side, or (H, W)) to [N, num_classes] logits
    and ends in a linear head.
    """
    from pigeon.models import zoo

    check_model_name(name)
    if zoo.is_external(name):
        return zoo.create_external(name, num_classes=num_classes, in_chans=in_chans, imgsz=imgsz)
    return MODELS[name](num_classes=num_classes, in_chans=in_chans, imgsz=imgsz)


def list_models(pattern: str | None = None) -> list[str]:
    """pigeon's own model names; with a pattern (fnmatch, e.g. "resnet*"), also the matching timm:<name> and
    tv:<name> architectures of whichever of timm and torchvision are installed."""
    from pigeon.models import zoo

    if pattern is None:
        return sorted(MODELS)
    found = fnmatch.filter(sorted(MODELS), pattern)
    for prefix in zoo.PREFIXES:
        if zoo.available(prefix):
            found += [f"{prefix}:{name}" for name in zoo.names(prefix, pattern)]
    return found
