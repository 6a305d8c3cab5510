"""DICOM: the stored rescale (slope, intercept) and window applied as the file says, onto one 16-bit band."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pigeon.data import load_dataset
from pigeon.data.rasters import Probe, probe, read_raster
from pigeon.errors import DatasetError, ImageError

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed: pip install 'pigeon[dicom]'")


def write_dicom(path: Path, stored: np.ndarray, **tags: Any) -> Path:
    """An uncompressed grayscale DICOM file of `stored` (uint16 or int16 [H, W]) with the given tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, tags.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, tags.pop("BitsStored", 16), 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ct(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint16).reshape(1, -1).repeat(2, axis=0)


def test_rescale_then_window_as_the_file_says(tmp_path: Path) -> None:
    # A CT slice: HU = 2 * stored - 1024; a soft-tissue window centre 40, width 401 spans HU -160.5 .. 240.5
    stored = ct([0, 432, 532, 532 + 32, 700, 4095])  # HU -1024, -160, 40, 104, 376, 7166
    path = write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40,
                       WindowWidth=401)
    assert probe(path) == Probe(1, "uint16")
    out = read_raster(path)
    assert out.shape == (1, 2, 6) and out.dtype == np.uint16
    hu = stored[0].astype(np.float64) * 2 - 1024
    want = np.clip(np.round(((hu - 39.5) / 400 + 0.5) * 65535), 0, 65535)
    np.testing.assert_array_equal(out[0, 0], want)
    assert out[0, 0, 0] == 0 and out[0, 0, -1] == 65535 and abs(int(out[0, 0, 2]) - 32768) < 100


def test_no_window_maps_the_stored_range_and_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = ct([0, 2048, 4095])
    plain = read_raster(write_dicom(tmp_path / "a.dcm", stored, BitsStored=12))
    np.testing.assert_array_equal(plain[0, 0], [0, round(2048 / 4095 * 65535), 65535])
    inverted = read_raster(write_dicom(tmp_path / "b.dcm", stored, BitsStored=12,
                                       PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_array_equal(inverted[0, 0], 65535 - plain[0, 0])
    signed = read_raster(write_dicom(tmp_path / "c.dcm", np.array([[-2048, 0, 2047]], np.int16), BitsStored=12))
    np.testing.assert_array_equal(signed[0, 0], [0, round(2048 / 4095 * 65535), 65535])


def test_a_folder_of_dicom_is_one_16_bit_band(tmp_path: Path, cache_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for label, name in enumerate(("normal", "lesion")):
        (tmp_path / "scans" / name).mkdir(parents=True)
        for k in range(2):
            stored = rng.integers(400, 600, (12, 12)).astype(np.uint16) + np.uint16(150 * label)
            write_dicom(tmp_path / "scans" / name / f"{k}.dcm", stored, RescaleSlope=1, RescaleIntercept=-500,
                        WindowCenter=50, WindowWidth=300)
    ds = load_dataset(str(tmp_path / "scans"), cache_dir=str(cache_dir), verbose=False)
    assert (ds.preprocess.channels, ds.preprocess.dtype, ds.preprocess.imgsz) == (1, "uint16", 12)
    first = read_raster(tmp_path / "scans" / "lesion" / "0.dcm")
    np.testing.assert_array_equal(np.asarray(ds.splits["train"].images[0]), first)  # classes sort: lesion first


def test_colour_and_multi_frame_dicom_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "frames.dcm", ct([1, 2]), NumberOfFrames=2)
    with pytest.raises(ImageError, match="frames.dcm holds 2 frames; pigeon reads one image per file"):
        read_raster(path)


def test_without_pydicom_a_dicom_folder_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        (tmp_path / "scans" / name).mkdir(parents=True)
        write_dicom(tmp_path / "scans" / name / "0.dcm", ct([1, 2]))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` now fails, as when it is not installed
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pydicom" else real(name, *a))
    with pytest.raises(DatasetError, match=r"0.dcm: DICOM files need pydicom: pip install 'pigeon\[dicom\]'"):
        load_dataset(str(tmp_path / "scans"), imgsz=8, verbose=False)
    with pytest.raises(ImageError, match=r"reading DICOM needs pydicom: pip install 'pigeon\[dicom\]'"):
        read_raster(tmp_path / "scans" / "a" / "0.dcm")
