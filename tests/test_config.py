"""Configs are validated where they arrive: unknown names get a suggestion, bad values name their field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import pigeon
from pigeon.config import ExportConfig, PredictConfig, TrainConfig, build
from pigeon.errors import ConfigError, PigeonError


def test_unknown_keyword_to_train_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        pigeon.train(data="digits", epoch=3, project=str(tmp_path / "runs"))
    message = str(info.value)
    assert message.startswith("unknown option 'epoch' (did you mean 'epochs'?); valid options: ")
    assert "batch, cache_dir, calibrate, channels" in message  # the valid names, sorted
    assert not (tmp_path / "runs").exists()  # refused before any work


@pytest.mark.parametrize(("typo", "meant"), [("learning_rate", "lr"), ("val_frac", "val_fraction"),
                                             ("weightdecay", "weight_decay"), ("imgsize", "imgsz"),
                                             ("xyzzy", None)])
def test_suggestions(typo: str, meant: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        build(TrainConfig, data="digits", **{typo: 1})
    assert (f"(did you mean {meant!r}?)" in str(info.value)) if meant else ("did you mean" not in str(info.value))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("epochs", 0, "epochs=0 is out of range; it must be >= 1"),
    ("batch", -4, "batch=-4 is out of range; it must be >= 1"),
    ("imgsz", 4, "imgsz=4 is out of range; it must be >= 8 and <= 1024"),
    ("imgsz", 2048, "imgsz=2048 is out of range; it must be >= 8 and <= 1024"),
    ("lr", 0.0, "lr=0.0 is out of range; it must be > 0.0"),
    ("momentum", 1.5, "momentum=1.5 is out of range"),
    ("weight_decay", -1e-4, "weight_decay=-0.0001 is out of range"),
    ("label_smoothing", 1.0, "label_smoothing=1.0 is out of range; it must be >= 0.0 and <= 0.99"),
    ("ema_decay", 1.01, "ema_decay=1.01 is out of range"),
    ("fliplr", -0.1, "fliplr=-0.1 is out of range"),
    ("erase", 2.0, "erase=2.0 is out of range"),
    ("val_fraction", 0.95, "val_fraction=0.95 is out of range; it must be >= 0.0 and <= 0.9"),
    ("patience", -1, "patience=-1 is out of range"),
    ("threads", 0, "threads=0 is out of range"),
    ("channels", 0, "channels=0 is not valid; choose 1 (grayscale), 3 (RGB), the band count"),
    ("optimizer", "adam", "optimizer='adam' is not valid; choose one of sgd, adamw (did you mean 'adamw'?)"),
    ("schedule", "cosin", "schedule='cosin' is not valid; choose one of cosine, onecycle (did you mean 'cosine'?)"),
    ("amp", "fp32", "amp='fp32' is not valid; choose one of auto, off, bf16, fp16"),
    ("resize", "squash", "resize='squash' is not valid; choose one of crop, pad, stretch"),
    ("select", "acc", "select='acc' is not valid; choose one of top1, macro_f1, loss"),
])
def test_out_of_range_values_name_the_field(field: str, value: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        pigeon.train(data="digits", **{field: value}, project=str(tmp_path / "runs"))
    assert str(info.value).startswith(message)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field", ["epochs", "val_fraction", "imgsz", "lr"])
def test_edges_of_the_ranges_are_accepted(field: str) -> None:
    edge = {"epochs": 1, "val_fraction": 0.9, "imgsz": 8, "lr": 1e-9}[field]
    assert getattr(build(TrainConfig, data="digits", **{field: edge}), field) == edge


def test_patience_with_val_fraction_zero_is_decided_by_the_data() -> None:
    # A folder with its own val/ needs no carved split, so only train() (which sees the data) can refuse it.
    assert build(TrainConfig, data="digits", patience=2, val_fraction=0).patience == 2
    assert build(TrainConfig, data="digits", patience=2).patience == 2


@pytest.mark.parametrize(("field", "value"), [("epochs", "3"), ("epochs", 2.5), ("batch", True),
                                              ("ema", "yes"), ("lr", "0.1"), ("model", 3)])
def test_wrong_types_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"^{field}=.* has the wrong type"):
        build(TrainConfig, data="digits", **{field: value})


def test_ints_are_accepted_for_floats() -> None:
    assert build(TrainConfig, data="digits", lr=1, label_smoothing=0).lr == 1


def test_data_is_required() -> None:
    with pytest.raises(ConfigError, match="data is required"):
        build(TrainConfig, data="")
    with pytest.raises(ConfigError, match="data is required"):
        build(TrainConfig)
    assert build(TrainConfig, resume="runs/train/x").data == ""  # a resumed run takes its data from the run


def test_predict_config() -> None:
    assert build(PredictConfig) == PredictConfig(top_k=5, batch=64, device="auto")
    with pytest.raises(ConfigError, match="top_k=0 is out of range"):
        build(PredictConfig, top_k=0)
    with pytest.raises(ConfigError, match="batch=0 is out of range"):
        build(PredictConfig, batch=0)
    with pytest.raises(ConfigError, match=r"unknown option 'topk' \(did you mean 'top_k'\?\)"):
        build(PredictConfig, topk=3)


def test_configs_are_frozen_and_round_trip() -> None:
    cfg = build(TrainConfig, data="digits", epochs=3, lr=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4  # type: ignore[misc]
    assert TrainConfig(**cfg.to_dict()) == cfg
    assert cfg.to_dict()["lr"] == 0.1 and cfg.to_dict()["imgsz"] is None  # None: chosen from the data


def test_config_error_is_a_value_error_and_a_pigeon_error() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, PigeonError)


@pytest.mark.parametrize(("given", "stored"), [
    (64, 64), ("64", 64), ("64x64", 64), ((64, 64), 64), ("96x192", (96, 192)), ("96X192", (96, 192)),
    ((96, 192), (96, 192)), ([96, 192], (96, 192)),  # a list: what a config file's JSON holds
])
def test_imgsz_takes_a_square_or_height_x_width(given: object, stored: object) -> None:
    assert TrainConfig(data="d", imgsz=given).imgsz == stored  # type: ignore[arg-type]
    assert ExportConfig(model="m.safetensors", imgsz=given).imgsz == stored  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["abc", "96x", "x96", "9x9x9", "64.5", 64.0, True, (96,), (96, 192, 3), "-8"])
def test_a_size_that_is_not_one_is_refused_with_the_fix(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"is not an input size; give one number for a square \(--imgsz 64\) or "
                                          r"HEIGHTxWIDTH \(--imgsz 96x192"):
        TrainConfig(data="d", imgsz=bad)  # type: ignore[arg-type]
