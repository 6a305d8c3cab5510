"""Every registered model honours one contract: forward_features / forward_head / reset_classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pigeon
from pigeon.errors import ConfigError
from pigeon.models import MODELS, create_model, register

# 224 px only for the smallest model: the contract does not depend on the size, the run time does.
CASES = [(name, imgsz) for name in pigeon.list_models() for imgsz in (8, 28, 64)] + [("pigeon-n", 224)]


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize(("name", "imgsz"), CASES)
def test_model_contract(name: str, imgsz: int, in_chans: int) -> None:
    torch.manual_seed(0)
    n, k = 2, 7
    model = create_model(name, num_classes=k, in_chans=in_chans, imgsz=imgsz).eval()
    x = torch.randn(n, in_chans, imgsz, imgsz)

    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert logits.shape == (n, k)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()
        assert torch.equal(model.forward_head(features), logits)
        assert features.ndim == 4 and features.shape[:2] == (n, model.num_features)
        assert pooled.shape == (n, model.num_features)
        assert model.num_classes == k

    model.train()
    model(x).logsumexp(1).sum().backward()
    params = dict(model.named_parameters())
    assert params
    for pname, p in params.items():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    # Zero-initialised residual scales may leave some gradients at zero, but the signal must get through.
    assert any(p.grad.abs().sum() > 0 for p in params.values() if p.grad is not None)

    model.eval()
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (n, 3)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (n, model.num_features)
    assert model.num_classes == 3


def test_list_models_is_sorted_and_includes_the_family() -> None:
    names = pigeon.list_models()
    assert names == sorted(names)
    assert {"pigeon-n", "pigeon-s", "pigeon-m"} <= set(names)
    assert names == sorted(MODELS)


def test_sizes_grow_with_the_variant() -> None:
    def count(name: str) -> int:
        return sum(p.numel() for p in create_model(name, num_classes=10, in_chans=1, imgsz=28).parameters())

    assert count("pigeon-n") < count("pigeon-s") < count("pigeon-m")


def test_registry_refuses_duplicates() -> None:
    original = MODELS["pigeon-n"]
    with pytest.raises(ValueError, match="'pigeon-n' is registered twice"):
        register("pigeon-n")(lambda **kw: nn.Identity())
    assert MODELS["pigeon-n"] is original


def test_register_and_create_a_new_model() -> None:
    def build(*, num_classes: int, in_chans: int, imgsz: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * imgsz * imgsz, num_classes))

    try:
        assert register("test-linear")(build) is build
        assert "test-linear" in pigeon.list_models()
        model = create_model("test-linear", num_classes=4, in_chans=1, imgsz=8)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    finally:
        MODELS.pop("test-linear", None)
    assert "test-linear" not in pigeon.list_models()


def test_create_model_typo_suggests_the_close_name() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("pigeon-nn", num_classes=10, in_chans=1, imgsz=28)
    message = str(info.value)
    assert "unknown model 'pigeon-nn'" in message
    assert "did you mean 'pigeon-n'?" in message
    assert ", ".join(sorted(MODELS)) in message  # every valid choice is listed


def test_create_model_far_name_lists_choices_without_a_guess() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("resnet50", num_classes=10, in_chans=1, imgsz=28)
    assert "did you mean" not in str(info.value)
    assert f"choose one of {', '.join(sorted(MODELS))}" in str(info.value)
