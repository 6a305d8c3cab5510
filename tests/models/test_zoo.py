"""timm:<name> and tv:<name> models: built with random weights behind pigeon's model contract."""

from __future__ import annotations

import fnmatch
import sys

import pytest
import torch
from torch import nn

import pigeon
from pigeon.errors import ConfigError
from pigeon.models import check_model_name, create_model
from pigeon.models.surgery import first_conv_name


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_vit", "tv:resnet18"])
def test_external_models_build_for_the_channels_and_classes(name: str, in_chans: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=in_chans, imgsz=32).eval()
    conv = model.get_submodule(first_conv_name(model))
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == in_chans
    with torch.no_grad():
        logits = model(torch.rand(2, in_chans, 32, 32))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_timm_transformer_is_built_for_the_input_size() -> None:
    model = create_model("timm:test_vit", num_classes=4, in_chans=1, imgsz=48).eval()
    assert tuple(model.patch_embed.img_size) == (48, 48)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 48, 48)).shape == (1, 4)


def test_external_models_start_from_random_weights() -> None:
    torch.manual_seed(0)
    a = create_model("tv:resnet18", num_classes=3, in_chans=3, imgsz=32)
    torch.manual_seed(1)
    b = create_model("tv:resnet18", num_classes=3, in_chans=3, imgsz=32)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


@pytest.mark.parametrize(("name", "library"), [
    ("timm:resnet181", "timm"), ("tv:resnet181", "torchvision"), ("tv:resnt18", "torchvision"),
])
def test_unknown_external_name_suggests_the_close_one(name: str, library: str) -> None:
    arch = name.partition(":")[2]
    with pytest.raises(ConfigError, match=rf"^{library} has no model named '{arch}' \(did you mean 'resnet18'\?\)"):
        create_model(name, num_classes=3, in_chans=1, imgsz=32)
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        check_model_name(name)


def test_unknown_own_name_mentions_the_external_prefixes() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'pigeon-x' \(did you mean 'pigeon-.'\?\).*timm:<name> / "
                                          r"tv:<name>"):
        create_model("pigeon-x", num_classes=3, in_chans=1, imgsz=32)


def test_list_models_without_pattern_lists_only_pigeons_own() -> None:
    assert pigeon.list_models() == ["pigeon-m", "pigeon-n", "pigeon-p", "pigeon-s"]


def test_list_models_pattern_matches_own_timm_and_torchvision_names() -> None:
    found = pigeon.list_models("resnet1*")
    assert {"timm:resnet18", "tv:resnet18", "tv:resnet152"} <= set(found)
    assert all(name.startswith(("timm:", "tv:")) for name in found)
    assert all(fnmatch.fnmatch(name.partition(":")[2], "resnet1*") for name in found)
    assert "tv:resnet50" not in found and "timm:resnet50" not in found
    assert pigeon.list_models("pigeon-*") == ["pigeon-m", "pigeon-n", "pigeon-p", "pigeon-s"]
    assert pigeon.list_models("no_such_model_*") == []


@pytest.mark.parametrize(("module", "prefix", "name"), [
    ("timm", "timm", "timm:test_resnet"), ("torchvision", "tv", "tv:resnet18"),
])
def test_missing_library_names_the_install_line(module: str, prefix: str, name: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(ConfigError, match=rf"need {module}: pip install 'pigeon\[{prefix}\]'"):
        create_model(name, num_classes=3, in_chans=1, imgsz=32)
    # The other library's names are still listed; the missing one's are skipped, not an error.
    found = pigeon.list_models("resnet18")
    assert f"{prefix}:resnet18" not in found
    other = "tv" if prefix == "timm" else "timm"
    assert f"{other}:resnet18" in found
    assert create_model("pigeon-n", num_classes=3, in_chans=1, imgsz=16)(torch.rand(2, 1, 16, 16)).shape == (2, 3)
