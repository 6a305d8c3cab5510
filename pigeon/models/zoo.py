"""Architectures from timm (`timm:<name>`) and torchvision (`tv:<name>`), built for pigeon's classes and channels.

Both libraries are imported only when such a name is used, and a missing one is named with its install line.
Models are always built with random weights here; pretrained weights arrive through `--weights`, which
never executes code from a file.
"""

from __future__ import annotations

import fnmatch
from types import ModuleType

from torch import nn

from pigeon.config import Size, size_hw
from pigeon.errors import ConfigError, did_you_mean
from pigeon.models.surgery import replace_first_conv

PREFIXES = {"timm": "timm", "tv": "torchvision"}


def is_external(name: str) -> bool:
    return name.partition(":")[0] in PREFIXES and ":" in name


def _import(prefix: str) -> ModuleType:
    package = PREFIXES[prefix]
    try:
        return __import__(package)
    except ImportError:
        raise ConfigError(f"models named {prefix}:<name> need {package}: pip install 'pigeon[{prefix}]'") from None


def available(prefix: str) -> bool:
    try:
        _import(prefix)
    except ConfigError:
        return False
    return True


def names(prefix: str, pattern: str = "*") -> list[str]:
    """Architecture names the library offers, without the prefix."""
    lib = _import(prefix)
    if prefix == "timm":
        return list(lib.list_models(pattern))
    import torchvision.models

    return fnmatch.filter(torchvision.models.list_models(module=torchvision.models), pattern)


def _unknown(prefix: str, arch: str) -> ConfigError:
    return ConfigError(f"{PREFIXES[prefix]} has no model named {arch!r}{did_you_mean(arch, names(prefix))}; "
                       f"list them with `pigeon models --filter '*{arch[:4]}*'`")


def check_name(name: str) -> None:
    prefix, _, arch = name.partition(":")
    lib = _import(prefix)
    known = lib.is_model(arch) if prefix == "timm" else arch in names(prefix)
    if not known:
        raise _unknown(prefix, arch)


def create_external(name: str, *, num_classes: int, in_chans: int, imgsz: Size) -> nn.Module:
    check_name(name)
    prefix, _, arch = name.partition(":")
    lib = _import(prefix)
    if prefix == "timm":
        try:  # transformers need their input size at build time; convnets refuse the keyword
            return lib.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                    img_size=imgsz)  # an int, or (H, W), which timm's ViTs take
        except TypeError:
            return lib.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if arch.startswith("vit_"):
        h, w = size_hw(imgsz)
        if h != w:
            raise ConfigError(f"{name} takes square inputs only (torchvision's image_size is one number), not "
                              f"{h}x{w}; use a square --imgsz such as {max(h, w)}, or a timm ViT (timm:vit_...), "
                              "which takes HEIGHTxWIDTH")
        kwargs["image_size"] = h
    if arch in ("googlenet", "inception_v3"):  # auxiliary heads return tuples in training; pigeon wants logits
        kwargs.update(aux_logits=False, init_weights=True)
    model = lib.models.get_model(arch, **kwargs)
    replace_first_conv(model, in_chans)
    return model
