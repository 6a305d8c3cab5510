"""Finding and changing the two ends of any classifier: the first convolution and the final linear head.

These work on pigeon's models, timm's and torchvision's alike, so fine-tuning needs no per-family code.
"""

from __future__ import annotations

import torch
from torch import nn

from pigeon.errors import ConfigError


def _module_name(model: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, m in model.named_modules() if m is target), None)


def classifier_name(model: nn.Module) -> str:
    """Dotted name of the final linear layer that maps features to class logits."""
    get = getattr(model, "get_classifier", None)  # timm's own answer beats a guess
    if callable(get):
        name = _module_name(model, get())
        if name and isinstance(get(), nn.Linear):
            return name
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear classifier head (nn.Linear), so pigeon cannot "
                          "fit it to your classes or freeze its backbone; choose another model")
    return linears[-1]


def first_conv_name(model: nn.Module) -> str:
    """Dotted name of the first convolution: the layer whose input is the image."""
    name = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise ConfigError(f"{type(model).__name__} has no Conv2d layer, so its input channels cannot be adapted")
    return name


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def adapt_conv_weight(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert first-layer filters to another input channel count so they respond the same to a flat image
    (every band equal).

    3 -> 1 sums the colour filters (a grey pixel feeds all three equally); 1 -> 3 repeats the filter and
    divides by three. Any other count keeps the first bands' own filters, so RGB -> RGB+NIR still looks at
    R, G and B as it learnt to: a new band gets the mean filter and everything is scaled by have / want; a
    dropped band's filter is shared out over the bands kept. Either way a flat image gets exactly the response
    it got before (these two rules give the 1 <-> 3 conversions above too).
    """
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if have == 3 and in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1 and in_chans == 3:
        return weight.repeat(1, 3, 1, 1) / 3
    if in_chans > have:
        extra = weight.mean(dim=1, keepdim=True).expand(-1, in_chans - have, -1, -1)
        return torch.cat([weight, extra], dim=1) * (have / in_chans)
    return weight[:, :in_chans] + weight[:, in_chans:].sum(dim=1, keepdim=True) / in_chans


def replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give the model an input layer for `in_chans` channels, converting its current filters."""
    name = first_conv_name(model)
    old = model.get_submodule(name)
    assert isinstance(old, nn.Conv2d)
    if old.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding,  # type: ignore[arg-type]
                    old.dilation, old.groups, bias=old.bias is not None, padding_mode=old.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_conv_weight(old.weight, in_chans))
        if old.bias is not None:
            new.bias.copy_(old.bias)  # type: ignore[union-attr]
    set_module(model, name, new)


def head_parameter_names(model: nn.Module) -> set[str]:
    prefix = classifier_name(model) + "."
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}
