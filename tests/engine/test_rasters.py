"""Training on 16-bit 4-band rasters, predicting on them, and fine-tuning an RGB checkpoint onto four bands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pigeon
from pigeon.engine.checkpoint import read

FAST = {"model": "pigeon-p", "epochs": 1, "batch": 4, "imgsz": 12, "val_fraction": 0.0, "plots": False,
        "verbose": False, "device": "cpu", "amp": "off"}
RasterFolder = Callable[..., Path]


def test_a_raster_run_records_its_bands_and_dtype_and_predicts_on_every_form(
        raster_folder: RasterFolder, raster_tile: Any, tmp_path: Path, cache_dir: Path) -> None:
    root = raster_folder()
    run = pigeon.train(str(root), project=str(tmp_path / "runs"), cache_dir=str(cache_dir), **FAST)
    pre = read(run.best)[1]["preprocess"]
    assert (pre["channels"], pre["dtype"], len(pre["mean"])) == (4, "uint16", 4)
    clf = pigeon.load(run.best, device="cpu")
    files = [str(root / "vegetation" / "0.npy"), str(root / "water" / "1.tif")]
    by_file = clf.predict(files)
    tile = raster_tile(0, nir=40000)
    by_array = clf.predict(tile)  # an array: bands first, as read_raster gives it
    np.testing.assert_allclose(by_array.probs, by_file[0].probs, atol=1e-6)
    np.testing.assert_allclose(clf.predict(tile.transpose(1, 2, 0)).probs, by_file[0].probs, atol=1e-6)
    # The model sees all 16 bits: one step of 1/65535 in the NIR band moves the logits
    nudged = tile.copy()
    nudged[3] += 1
    assert not np.array_equal(clf.logits(tile[None]).numpy(), clf.logits(nudged[None]).numpy())


def test_images_without_the_models_bands_get_an_error_each(raster_folder: RasterFolder, tmp_path: Path,
                                                             cache_dir: Path) -> None:
    from PIL import Image

    run = pigeon.train(str(raster_folder()), project=str(tmp_path / "runs"), cache_dir=str(cache_dir), **FAST)
    np.save(tmp_path / "three.npy", np.zeros((3, 12, 12), np.uint16))
    Image.new("RGB", (12, 12)).save(tmp_path / "photo.png")
    three, photo = pigeon.predict(run.best, [str(tmp_path / "three.npy"), str(tmp_path / "photo.png")], device="cpu")
    assert three.error == ("has 3 band(s); the model takes 4: give images with the bands it was trained on, in the "
                           "same order")
    assert photo.error is not None and "the model takes 4-band rasters; give a .npy array or a TIFF" in photo.error


def test_an_rgb_checkpoint_fine_tunes_onto_four_bands(digits_folder: Any, raster_folder: RasterFolder,
                                                      tmp_path: Path, cache_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rgb = digits_folder(tmp_path / "rgb", classes=("0", "1"), per_class=3, size=12, mode="RGB")
    source = pigeon.train(str(rgb), project=str(tmp_path / "runs"), name="rgb", cache_dir=str(cache_dir), **FAST)
    assert read(source.best)[1]["preprocess"]["channels"] == 3
    tuned = pigeon.train(str(raster_folder()), weights=str(source.best), project=str(tmp_path / "runs"),
                         name="nir", cache_dir=str(cache_dir), **{**FAST, "verbose": True})
    out = capsys.readouterr().out
    assert "3 -> 4 channels (first bands' filters kept, new ones the mean)" in out
    assert read(tuned.best)[1]["preprocess"]["channels"] == 4
