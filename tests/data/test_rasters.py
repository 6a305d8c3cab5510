"""Rasters: .npy arrays and multi-band / 16-bit TIFF files read band by band, kept at 16 bits into the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pigeon.data import load_dataset
from pigeon.data.augment import erase, resized_crop, translate
from pigeon.data.dataset import channel_stats
from pigeon.data.preprocess import normalize
from pigeon.data.rasters import Probe, for_display, probe, read_raster, resize_raster, to_dtype
from pigeon.errors import DatasetError, ImageError

RasterFolder = Callable[..., Path]
tifffile = pytest.importorskip("tifffile", reason="the tiff extra is not installed: pip install 'pigeon[tiff]'")


def bands(seed: int, shape: tuple[int, ...] = (4, 12, 12), nir: int = 30000) -> np.ndarray:
    """A 16-bit RGB+NIR tile [C, H, W]: dim colour bands, a near-infrared band around `nir`."""
    a = np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)
    a[3] += np.uint16(nir)
    return a


# -- reading one file --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_npy_and_tiff_give_bands_first_in_their_own_dtype(layout: str, tmp_path: Path) -> None:
    tile = bands(0, (4, 10, 14))
    stored = tile if layout == "CHW" else tile.transpose(1, 2, 0)
    np.save(tmp_path / "t.npy", stored)
    tifffile.imwrite(tmp_path / "t.tif", stored, photometric="minisblack",
                     planarconfig="separate" if layout == "CHW" else "contig")
    for name in ("t.npy", "t.tif"):
        got = read_raster(tmp_path / name)
        assert got.dtype == np.uint16 and got.shape == (4, 10, 14)
        np.testing.assert_array_equal(got, tile)
    np.save(tmp_path / "grey.npy", tile[0])
    assert read_raster(tmp_path / "grey.npy").shape == (1, 10, 14)


def test_probe_leaves_8_bit_grey_and_rgb_tiffs_to_pil(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8))
    tifffile.imwrite(tmp_path / "grey16.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(tmp_path / "four.tif", np.zeros((8, 8, 4), np.uint8))
    np.save(tmp_path / "rgb.npy", np.zeros((8, 8, 3), np.uint8))
    assert probe(tmp_path / "rgb.tif") is None  # decoded by PIL exactly as before rasters existed
    assert probe(tmp_path / "grey16.tif") == Probe(1, "uint16")
    assert probe(tmp_path / "four.tif") == Probe(4, "uint8")
    assert probe(tmp_path / "rgb.npy") == Probe(3, "uint8")  # a .npy is always a raster


def test_unusable_arrays_are_refused_with_the_fix(tmp_path: Path) -> None:
    np.save(tmp_path / "float.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(ImageError, match=r"float.npy holds float32 values; pigeon reads uint8 or uint16 rasters: "
                                         r"convert it"):
        read_raster(tmp_path / "float.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match="cannot be read as a .npy array .*; save it with np.save, without objects"):
        read_raster(tmp_path / "objects.npy")  # never unpickled
    np.save(tmp_path / "video.npy", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ImageError, match=r"video.npy has shape \(2, 3, 8, 8\), not an image; give HxW, HxWxC"):
        read_raster(tmp_path / "video.npy")


def test_resizing_keeps_16_bit_values_whole() -> None:
    tile = bands(1, (4, 20, 20))
    np.testing.assert_array_equal(resize_raster(tile, 20, "crop"), tile)  # the native size: bit for bit
    flat = np.full((2, 20, 40), 40001, np.uint16)  # no 8-bit value is 40001, or any odd multiple of 1/257
    for mode, box in (("crop", (10, 10)), ("pad", (10, 30)), ("stretch", (16, 8))):
        out = resize_raster(flat, box, mode)
        assert out.dtype == np.uint16 and out.shape == (2, *box)
        assert set(np.unique(out)) <= {0, 40001}  # pad adds black; nothing else is squeezed through 8 bits
    assert (resize_raster(flat, (10, 30), "pad")[:, :, 10:20] == 40001).all()


def test_dtype_conversions_and_display() -> None:
    assert to_dtype(np.array([0, 1, 255], np.uint8), "uint16").tolist() == [0, 257, 65535]
    assert to_dtype(np.array([0, 257, 65535], np.uint16), "uint8").tolist() == [0, 1, 255]
    shown = for_display(np.full((2, 5, 4, 4), 65535, np.uint16))
    assert shown.dtype == np.uint8 and shown.shape == (2, 3, 4, 4) and (shown == 255).all()  # first three bands


# -- the device side ----------------------------------------------------------------------------------------------

def test_normalize_and_stats_read_16_bit_by_its_full_range() -> None:
    x = torch.tensor([0, 32768, 65535], dtype=torch.uint16).view(1, 1, 1, 3)
    out = normalize(x, torch.tensor([0.5]), torch.tensor([0.5]))
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 32768 / 65535 * 2 - 1, 1.0]))
    mean, _ = channel_stats(np.full((3, 2, 4, 4), 65535, np.uint16))
    assert mean == (1.0, 1.0)


def test_augmentation_kernels_take_uint16() -> None:
    x = torch.from_numpy(bands(2, (4, 8, 8)).astype(np.uint16))[None].repeat(2, 1, 1, 1)
    shifted = translate(x, torch.tensor([[1, 0], [0, -2]]))
    assert shifted.dtype == torch.uint16 and (shifted[0, :, 0] == 0).all()
    torch.testing.assert_close(shifted[0, :, 1:].to(torch.int32), x[0, :, :-1].to(torch.int32))
    holes = erase(x, torch.tensor([[0, 0, 2, 2], [0, 0, 0, 0]]))
    assert holes.dtype == torch.uint16 and (holes[0, :, :2, :2] == 0).all() and torch.equal(holes[1], x[1])
    whole = resized_crop(x, torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2))
    assert whole.dtype == torch.uint16 and torch.equal(whole, x)  # the full box: every 16-bit value back


# -- a folder of rasters ------------------------------------------------------------------------------------------

def test_a_folder_of_16_bit_four_band_rasters_is_cached_at_full_precision(raster_folder: RasterFolder,
                                                                           raster_tile: Any, cache_dir: Path) -> None:
    root = raster_folder()
    ds = load_dataset(str(root), imgsz=12, cache_dir=str(cache_dir), verbose=False)
    spec = ds.preprocess
    assert (spec.channels, spec.dtype, spec.raster) == (4, "uint16", True)
    images = np.asarray(ds.splits["train"].images)
    assert images.dtype == np.uint16 and images.shape == (6, 4, 12, 12)
    # The sorted file order: vegetation/0.npy, 1.tif, 2.npy, then water/...; every value as written
    np.testing.assert_array_equal(images[1], raster_tile(1, nir=40000))
    np.testing.assert_array_equal(images[3], raster_tile(10, nir=2000))
    assert spec.mean[3] > 0.3 > spec.mean[0]  # the NIR band's statistics, in [0, 1] units of 65535
    assert spec.to_dict()["dtype"] == "uint16"


def test_files_that_do_not_fit_the_folders_bands_are_skipped_with_the_reason(raster_folder: RasterFolder,
                                                                             cache_dir: Path) -> None:
    from PIL import Image

    root = raster_folder()
    np.save(root / "water" / "three.npy", np.zeros((3, 12, 12), np.uint16))
    Image.new("RGB", (12, 12)).save(root / "water" / "photo.png")
    ds = load_dataset(str(root), imgsz=12, cache_dir=str(cache_dir), verbose=False)
    reasons = dict(ds.skipped)
    assert reasons[str(root / "water" / "three.npy")] == ("has 3 band(s), but this folder's rasters have 4; give "
                                                          "every image the same bands")
    assert "save it as .npy or TIFF with 4" in reasons[str(root / "water" / "photo.png")]
    assert len(ds.splits["train"]) == 6


def test_channels_must_match_the_rasters_bands(raster_folder: RasterFolder, cache_dir: Path) -> None:
    root = raster_folder(per_class=2)
    with pytest.raises(DatasetError, match=r"its images have 4 bands \(e.g. .*\); --channels must be 4 or left "
                                           r"unset"):
        load_dataset(str(root), imgsz=12, channels=3, cache_dir=str(cache_dir), verbose=False)
    assert load_dataset(str(root), imgsz=12, channels=4, cache_dir=str(cache_dir), verbose=False).preprocess \
        .channels == 4


def test_a_raster_folder_without_imgsz_trains_at_its_own_size(raster_folder: RasterFolder, cache_dir: Path) -> None:
    ds = load_dataset(str(raster_folder()), cache_dir=str(cache_dir), verbose=False)  # 12x12 tiles
    assert ds.preprocess.imgsz == 12
    assert any(note.startswith("imgsz 12: the images' own size") for note in ds.notes)


def test_a_built_in_takes_one_or_three_channels_only() -> None:
    with pytest.raises(DatasetError, match="digits is a built-in of grayscale or RGB images: choose --channels 1 or 3"):
        load_dataset("digits", channels=4, verbose=False)
