"""Fine-tuning end to end, kept tiny: weights in, frozen then unfrozen backbone, a checkpoint that says where
its weights came from and predicts like any other."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pigeon
from pigeon.data.preprocess import Preprocess
from pigeon.engine import checkpoint
from pigeon.engine import train as train_mod
from pigeon.errors import CheckpointError, ConfigError
from pigeon.models import create_model
from pigeon.models.surgery import head_parameter_names

FAST = {"amp": "off", "device": "cpu", "verbose": False, "plots": False, "ema": False, "seed": 0}
PER_CLASS = {"train": 4, "val": 2}


def _options(tmp_path: Path, cache_dir: Path, name: str, **options: Any) -> dict[str, Any]:
    return {**FAST, "project": str(tmp_path / "runs"), "name": name, "cache_dir": str(cache_dir), **options}


def _val_accuracy_by_predict(best: Path, val_root: Path) -> float:
    """top-1 on the val folder as pigeon.load(best).predict sees it, with the truth from the folder names."""
    clf = pigeon.load(best, device="cpu")
    preds = clf.predict(str(val_root))
    assert isinstance(preds, list) and preds and all(p.ok for p in preds)
    assert all(p.label in clf.classes for p in preds)
    return sum(Path(p.source).parent.name == p.label for p in preds) / len(preds)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _pigeon_checkpoint(path: Path, classes: list[str], model_name: str = "pigeon-n", imgsz: int = 16,
                       seed: int = 0) -> tuple[Path, nn.Module]:
    """A pigeon checkpoint of a fresh (untrained) model, as training would write it."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=len(classes), in_chans=1, imgsz=imgsz)
    model.train()(torch.randn(4, 1, imgsz, imgsz))  # BatchNorm statistics off their defaults
    meta = {"model": model_name, "classes": classes,
            "preprocess": Preprocess(imgsz=imgsz, channels=1, mean=(0.3,), std=(0.3,)).to_dict()}
    return checkpoint.save(path, model.eval(), meta), model


# --- (a, b) external architectures from weight files --------------------------------------------------------------


def test_torchvision_resnet18_fine_tunes_from_a_pth_state_dict(tmp_path: Path, cache_dir: Path,
                                                               digits_folder: Callable[..., Path]) -> None:
    import torchvision

    data = digits_folder(tmp_path / "rgb", splits=("train", "val"), per_class=PER_CLASS, mode="RGB", size=32)
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)  # 1000 classes, 3 channels: as torchvision exports it
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")

    run = pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "tv", model="tv:resnet18", imgsz=32,
                                                   epochs=1, batch=12, weights=str(tmp_path / "resnet18.pth")))

    _, meta = checkpoint.read(run.best)
    body = [k for k in source.state_dict() if not k.startswith("fc.")]
    assert meta["pretrained"] == {"source": str(tmp_path / "resnet18.pth"), "tensors": len(body),
                                  "head": "new, 3 classes (the source does not name its classes)",
                                  "carried_classes": [], "channels": None, "resampled": None}
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["weights"] == str(tmp_path / "resnet18.pth") and config["backbone_lr_mult"] == 1.0
    # The backbone started from the file: its filters still point the same way, while an independently
    # initialised resnet18's are unrelated to them.
    best = load_file(str(run.best))
    assert _cosine(best["conv1.weight"], source.conv1.weight.detach()) > 0.8
    unrelated = create_model("tv:resnet18", num_classes=3, in_chans=3, imgsz=32).conv1.weight.detach()
    assert abs(_cosine(unrelated, source.conv1.weight.detach())) < 0.2
    torch.manual_seed(1)
    fresh = torchvision.models.resnet18(weights=None)
    assert abs(_cosine(fresh.conv1.weight.detach(), source.conv1.weight.detach())) < 0.2
    assert best["fc.weight"].shape == (3, 512)
    assert _val_accuracy_by_predict(run.best, data / "val") == pytest.approx(run.val["top1"])


def test_timm_resnet_fine_tunes_from_safetensors_on_grey_images(tmp_path: Path, cache_dir: Path,
                                                                digits_folder: Callable[..., Path]) -> None:
    import timm

    data = digits_folder(tmp_path / "grey", splits=("train", "val"), per_class=PER_CLASS, size=32)
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False)  # 1000 classes, RGB
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "test_resnet.safetensors"))

    run = pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "timm", model="timm:test_resnet",
                                                   imgsz=32, epochs=1, batch=12, freeze_epochs=1,
                                                   weights=str(tmp_path / "test_resnet.safetensors")))

    _, meta = checkpoint.read(run.best)
    assert meta["pretrained"]["channels"] == "3 -> 1 channels (summed)"
    assert meta["pretrained"]["tensors"] == len([k for k in state if not k.startswith("fc.")])
    assert meta["preprocess"]["channels"] == 1
    # A frozen epoch: the backbone, BatchNorm statistics included, is exactly the file's (summed first layer).
    best = load_file(str(run.best))
    torch.testing.assert_close(best["conv1.0.weight"], state["conv1.0.weight"].sum(dim=1, keepdim=True))
    for key, tensor in state.items():
        if not key.startswith(("fc.", "conv1.0.")):
            assert torch.equal(best[key], tensor), key
    clf = pigeon.load(run.best, device="cpu")
    assert clf.meta["pretrained"] == meta["pretrained"]
    assert _val_accuracy_by_predict(run.best, data / "val") == pytest.approx(run.val["top1"])


# --- (c, f, g) pigeon checkpoints as the starting point -----------------------------------------------------------


def test_pigeon_checkpoint_carries_the_head_rows_of_shared_classes(tmp_path: Path, cache_dir: Path,
                                                                    digits_folder: Callable[..., Path]) -> None:
    first = digits_folder(tmp_path / "first", splits=("train", "val"), per_class=PER_CLASS, classes=("0", "1", "2"))
    second = digits_folder(tmp_path / "second", splits=("train", "val"), per_class=PER_CLASS,
                           classes=("2", "1", "5"))
    pre = pigeon.train(data=str(first), **_options(tmp_path, cache_dir, "pre", imgsz=16, epochs=1))

    run = pigeon.train(data=str(second), **_options(tmp_path, cache_dir, "fine", epochs=1, weights=str(pre.best)))

    _, meta = checkpoint.read(run.best)
    assert meta["classes"] == ["1", "2", "5"]
    assert meta["pretrained"]["carried_classes"] == ["1", "2"]
    assert meta["pretrained"]["head"] == "carried 2 of 3 classes over by name, the rest new"
    assert meta["pretrained"]["source"] == str(pre.best)
    assert _val_accuracy_by_predict(run.best, second / "val") == pytest.approx(run.val["top1"])


def test_imgsz_follows_a_pigeon_checkpoint_when_not_given(tmp_path: Path, cache_dir: Path,
                                                         digits_folder: Callable[..., Path]) -> None:
    data = digits_folder(tmp_path / "d", splits=("train", "val"), per_class=PER_CLASS, size=24)
    path, _ = _pigeon_checkpoint(tmp_path / "ck16.safetensors", ["0", "1", "2"], imgsz=16)

    run = pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "follow", epochs=1, weights=str(path)))

    assert run.config.imgsz == 16  # not the data's 24 nor the folder default of 64
    assert json.loads((run.run_dir / "config.json").read_text())["imgsz"] == 16
    _, meta = checkpoint.read(run.best)
    assert meta["preprocess"]["imgsz"] == 16
    assert meta["pretrained"]["carried_classes"] == ["0", "1", "2"]


def test_an_explicit_imgsz_that_does_not_fit_the_checkpoint_is_refused_with_its_size(
        tmp_path: Path, cache_dir: Path, digits_folder: Callable[..., Path]) -> None:
    data = digits_folder(tmp_path / "d", per_class=4)
    path, _ = _pigeon_checkpoint(tmp_path / "ck8.safetensors", ["0", "1", "2"], imgsz=8)
    with pytest.raises(CheckpointError, match="use --imgsz 8"):
        pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "explicit", epochs=1, imgsz=32,
                                                 weights=str(path)))


def test_pigeon_n_weights_into_pigeon_s_fail_before_any_epoch(tmp_path: Path, cache_dir: Path,
                                                              digits_folder: Callable[..., Path]) -> None:
    data = digits_folder(tmp_path / "d", per_class=4)
    path, _ = _pigeon_checkpoint(tmp_path / "n.safetensors", ["0", "1", "2"], model_name="pigeon-n")
    with pytest.raises(CheckpointError, match=r"does not fit pigeon-s .*nothing was loaded\. Fix: the weights were "
                                              r"trained as pigeon-n: use --model pigeon-n"):
        pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "wrong", model="pigeon-s", epochs=1,
                                                 weights=str(path)))
    run_dir = tmp_path / "runs" / "wrong"
    assert not (run_dir / "results.csv").exists()
    assert not list(run_dir.glob("weights/*"))


def test_unreadable_weights_fail_before_the_data_is_read(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        pigeon.train(data=str(tmp_path / "no-such-folder"), **_options(tmp_path, cache_dir, "x", epochs=1,
                                                                        weights=str(tmp_path / "nope.pth")))
    assert not (tmp_path / "runs").exists()


# --- (d) freezing ---------------------------------------------------------------------------------------------


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_backbone_keeps_weights_and_batchnorm_statistics_while_the_head_learns(optimizer: str) -> None:
    torch.manual_seed(0)
    model = create_model("pigeon-n", num_classes=3, in_chans=1, imgsz=16)
    head = head_parameter_names(model)
    groups = train_mod.param_groups(model, 0.05, head, backbone_lr_mult=0.1)
    opt = (torch.optim.SGD(groups, lr=0.1, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(groups, lr=0.01))
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    train_mod.set_backbone_frozen(model, head, frozen=True)
    assert model.training
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    train_mod.train_step(model, x, y, opt, scaler, 0.1, None, 0.0, 0.0)
    after = model.state_dict()
    for key in before:
        if key.startswith("fc."):
            assert not torch.equal(after[key], before[key]), key
        else:
            assert torch.equal(after[key], before[key]), key  # weights and BatchNorm statistics

    train_mod.set_backbone_frozen(model, head, frozen=False)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    stats = _bn_buffers(model)
    weight = model.stem[0].weight.detach().clone()
    train_mod.train_step(model, *_batch(1), opt, scaler, 0.1, None, 0.0, 0.0)
    assert not torch.equal(model.stem[0].weight, weight)
    moved = _bn_buffers(model)
    assert all(not torch.equal(moved[k], stats[k]) for k in stats if k.endswith("running_mean"))
    assert all(int(moved[k]) == int(stats[k]) + 1 for k in stats if k.endswith("num_batches_tracked"))


def test_freeze_epochs_train_the_head_then_everything(tmp_path: Path, cache_dir: Path,
                                                     digits_folder: Callable[..., Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = digits_folder(tmp_path / "d", splits=("train", "val"), per_class=PER_CLASS, size=16)
    path, source = _pigeon_checkpoint(tmp_path / "ck.safetensors", ["0", "1", "2"], imgsz=16)
    src = {k: v.detach() for k, v in source.state_dict().items()}

    frozen = pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "frozen", epochs=1, freeze_epochs=1,
                                                      weights=str(path)))
    best = load_file(str(frozen.best))
    assert all(torch.equal(best[k], v) for k, v in src.items() if not k.startswith("fc.")), "backbone moved"
    assert not torch.equal(best["fc.weight"], src["fc.weight"])

    capsys.readouterr()
    both = pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "both", epochs=2, freeze_epochs=1,
                                                    weights=str(path), verbose=True))
    out = capsys.readouterr().out
    assert "epoch 1: backbone frozen (head only)" in out
    assert "epoch 2: backbone unfrozen" in out
    assert out.index("epoch 1: backbone frozen") < out.index("epoch 2: backbone unfrozen")
    assert both.epochs == 2
    last = load_file(str(both.last))  # the final epoch's model (best may be the frozen epoch's)
    assert not torch.equal(last["stem.0.weight"], src["stem.0.weight"])
    assert not torch.equal(last["stem.2.running_mean"], src["stem.2.running_mean"])


# --- (e) backbone learning rate ----------------------------------------------------------------------------------


def test_param_groups_scale_the_backbone_lr_and_decay_only_matrices() -> None:
    model = create_model("pigeon-n", num_classes=3, in_chans=1, imgsz=16)
    head = head_parameter_names(model)
    groups = train_mod.param_groups(model, 0.05, head, backbone_lr_mult=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    by_mult: dict[float, set[str]] = {}
    for group in groups:
        members = [names[id(p)] for p in group["params"]]
        by_mult.setdefault(group["lr_mult"], set()).update(members)
        assert group["weight_decay"] == (0.05 if all(p.ndim > 1 for p in group["params"]) else 0.0)
        assert all(p.ndim > 1 for p in group["params"]) or all(p.ndim <= 1 for p in group["params"])
    assert by_mult[1.0] == head == {"fc.weight", "fc.bias"}
    assert by_mult[0.1] == set(names.values()) - head
    assert sum(len(g["params"]) for g in groups) == len(names)  # every parameter exactly once

    plain = train_mod.param_groups(model, 0.05)
    assert [g["lr_mult"] for g in plain] == [1.0, 1.0]
    assert sum(len(g["params"]) for g in plain) == len(names)


def test_train_step_applies_each_groups_lr_multiplier() -> None:
    torch.manual_seed(0)
    model = create_model("pigeon-n", num_classes=3, in_chans=1, imgsz=16)
    head = head_parameter_names(model)
    opt = torch.optim.SGD(train_mod.param_groups(model, 0.0, head, backbone_lr_mult=0.25), lr=0.0)
    train_mod.train_step(model.train(), *_batch(), opt, torch.amp.GradScaler("cpu", enabled=False), 0.2, None,
                         0.0, 0.0)
    assert {g["lr_mult"] for g in opt.param_groups} == {0.25, 1.0}
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(0.2 * group["lr_mult"])


@pytest.mark.parametrize(("with_weights", "given", "resolved"), [(True, None, 1.0), (False, None, 1.0),
                                                                  (True, 0.5, 0.5)])
def test_resolved_backbone_lr_mult_is_recorded(with_weights: bool, given: float | None, resolved: float,
                                               tmp_path: Path, cache_dir: Path,
                                               digits_folder: Callable[..., Path]) -> None:
    data = digits_folder(tmp_path / "d", per_class=4)
    options: dict[str, Any] = {"epochs": 1, "imgsz": 16, "val_fraction": 0.0}
    if with_weights:
        options["weights"] = str(_pigeon_checkpoint(tmp_path / "ck.safetensors", ["0", "1", "2"])[0])
    if given is not None:
        options["backbone_lr_mult"] = given
    run = pigeon.train(data=str(data), **_options(tmp_path, cache_dir, "lr", **options))
    assert json.loads((run.run_dir / "config.json").read_text())["backbone_lr_mult"] == resolved
    assert run.config.backbone_lr_mult == resolved


# --- (h) invalid combinations ---------------------------------------------------------------------------------


def test_freeze_epochs_without_weights_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="freeze_epochs needs weights"):
        pigeon.train(data="digits", freeze_epochs=1, project=str(tmp_path / "runs"), **FAST)
    assert not (tmp_path / "runs").exists()


def test_backbone_lr_mult_without_weights_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backbone_lr_mult needs weights"):
        pigeon.train(data="digits", backbone_lr_mult=0.1, project=str(tmp_path / "runs"), **FAST)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("option", "value"), [("freeze_epochs", -1), ("backbone_lr_mult", -0.5)])
def test_negative_fine_tuning_options_are_config_errors(option: str, value: float, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{option}={value} is out of range"):
        pigeon.train(data="digits", weights="w.pth", project=str(tmp_path / "runs"), **{option: value}, **FAST)
