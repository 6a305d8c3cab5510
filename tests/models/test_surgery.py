"""The two ends of any classifier: finding the head and the first convolution, and converting input channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pigeon.errors import ConfigError
from pigeon.models import create_model
from pigeon.models.surgery import (
    adapt_conv_weight,
    classifier_name,
    first_conv_name,
    head_parameter_names,
    replace_first_conv,
)


@pytest.mark.parametrize(("name", "head", "conv"), [
    ("pigeon-n", "fc", "stem.0"),
    ("timm:test_resnet", "fc", "conv1.0"),
    ("tv:resnet18", "fc", "conv1"),
    ("tv:mobilenet_v3_small", "classifier.3", "features.0.0"),
    ("timm:test_vit", "head", "patch_embed.proj"),
])
def test_classifier_and_first_conv_names(name: str, head: str, conv: str) -> None:
    model = create_model(name, num_classes=5, in_chans=1, imgsz=32)
    assert classifier_name(model) == head
    assert first_conv_name(model) == conv
    linear = model.get_submodule(head)
    assert isinstance(linear, nn.Linear) and linear.out_features == 5
    first = model.get_submodule(conv)
    assert isinstance(first, nn.Conv2d) and first.in_channels == 1
    assert head_parameter_names(model) == {f"{head}.weight", f"{head}.bias"}


def test_names_refuse_models_without_a_linear_head_or_a_conv() -> None:
    convs_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match=r"no linear classifier head \(nn.Linear\)"):
        classifier_name(convs_only)
    linear_only = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ConfigError, match="no Conv2d layer"):
        first_conv_name(linear_only)


def _grey(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rgb_to_grey_filters_respond_to_a_grey_image_like_the_rgb_filters() -> None:
    rgb = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grey_filters = adapt_conv_weight(rgb, 1)
    assert grey_filters.shape == (6, 1, 3, 3)
    image = _grey()
    expected = F.conv2d(image.repeat(1, 3, 1, 1), rgb)  # the grey image shown to the colour filters
    torch.testing.assert_close(F.conv2d(image, grey_filters), expected, rtol=1e-12, atol=1e-12)


def test_grey_to_rgb_filters_respond_to_a_grey_image_like_the_grey_filters() -> None:
    grey = torch.randn(6, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rgb_filters = adapt_conv_weight(grey, 3)
    assert rgb_filters.shape == (6, 3, 3, 3)
    torch.testing.assert_close(rgb_filters[:, 0], rgb_filters[:, 2])  # every colour weighted alike
    image = _grey()
    expected = F.conv2d(image, grey)
    torch.testing.assert_close(F.conv2d(image.repeat(1, 3, 1, 1), rgb_filters), expected, rtol=1e-12, atol=1e-12)


def test_same_channel_count_returns_the_weight_itself() -> None:
    weight = torch.randn(4, 3, 3, 3)
    assert adapt_conv_weight(weight, 3) is weight


@pytest.mark.parametrize(("have", "want"), [(3, 4), (4, 3), (2, 3), (3, 2), (4, 1), (1, 4), (3, 13)])
def test_other_channel_counts_keep_a_flat_images_response(have: int, want: int) -> None:
    weight = torch.randn(6, have, 3, 3, generator=torch.Generator().manual_seed(have * 10 + want),
                         dtype=torch.float64)
    adapted = adapt_conv_weight(weight, want)
    assert adapted.shape == (6, want, 3, 3)
    flat = _grey()  # every band the same image
    torch.testing.assert_close(F.conv2d(flat.repeat(1, want, 1, 1), adapted), F.conv2d(flat.repeat(1, have, 1, 1),
                                                                                        weight), rtol=1e-12,
                               atol=1e-12)


def test_rgb_to_rgb_nir_keeps_each_colours_own_filter() -> None:
    rgb = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    four = adapt_conv_weight(rgb, 4)
    torch.testing.assert_close(four[:, :3], rgb * 3 / 4)  # R, G, B still see what they learnt, scaled
    torch.testing.assert_close(four[:, 3], rgb.mean(dim=1) * 3 / 4)  # the new band: the mean filter
    back = adapt_conv_weight(four, 3)
    torch.testing.assert_close(back, four[:, :3] + four[:, 3:] / 3)  # a dropped band is shared out


def test_replace_first_conv_converts_filters_and_keeps_the_layer_settings() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=1, dilation=1, bias=True), nn.ReLU(),
                          nn.Conv2d(4, 4, 3))
    old = model[0]
    second = model[2]
    replace_first_conv(model, 1)
    new = model[0]
    assert new is not old and isinstance(new, nn.Conv2d)
    assert (new.in_channels, new.out_channels, new.kernel_size, new.stride, new.padding) == (1, 4, (5, 5), (2, 2),
                                                                                               (1, 1))
    torch.testing.assert_close(new.weight, old.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(new.bias, old.bias)
    assert model[2] is second  # only the first convolution is replaced
    grey = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(new(grey), old(grey.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)


def test_replace_first_conv_on_a_nested_torchvision_layer() -> None:
    model = create_model("tv:mobilenet_v3_small", num_classes=3, in_chans=3, imgsz=32)
    old = model.features[0][0]
    replace_first_conv(model, 1)
    new = model.features[0][0]
    assert new.in_channels == 1 and new.bias is None
    torch.testing.assert_close(new.weight, old.weight.sum(dim=1, keepdim=True))
    assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_replace_first_conv_with_the_same_channels_leaves_the_layer_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    old = model[0]
    replace_first_conv(model, 3)
    assert model[0] is old


def test_replace_first_conv_to_four_bands() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True))
    old = model[0]
    replace_first_conv(model, 4)
    assert model[0].in_channels == 4 and model[0].out_channels == 4
    torch.testing.assert_close(model[0].bias, old.bias)
    flat = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model[0](flat.repeat(1, 4, 1, 1)), old(flat.repeat(1, 3, 1, 1)), rtol=1e-5,
                                   atol=1e-5)
