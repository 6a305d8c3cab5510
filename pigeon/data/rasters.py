"""Rasters: images with any number of bands, 8 or 16 bits each, from .npy arrays and (multi-band) TIFF files.

PIL turns every image into L or RGB bytes, which loses a fourth band (near infrared) and the low byte of 16-bit
data. A folder holding .npy files, or TIFFs with other than 1 or 3 bands or more than 8 bits, is decoded here
instead: each file becomes [C, H, W] in its own dtype (uint8 or uint16), resized band by band in float and
rounded back, so 16-bit data keeps its precision until `normalize` divides by 65535 on the device.
TIFF needs `tifffile` (pip install 'pigeon[tiff]'), imported only when a TIFF is read.

DICOM (.dcm, `pydicom`, pip install 'pigeon[dicom]') is read as the file says to show it: the stored values
through RescaleSlope/RescaleIntercept (to Hounsfield units for CT), then through the first stored window
(WindowCenter/WindowWidth, the standard's linear function), inverted for MONOCHROME1, onto 0..65535: one
16-bit band. A file with no window maps the whole range its stored bits can hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.config import Size
from pigeon.errors import ImageError

RASTER_EXTENSIONS = frozenset({".npy", ".tif", ".tiff", ".dcm"})
DTYPES = {"uint8": np.uint8, "uint16": np.uint16}
MAX_BANDS = 64


@dataclass(frozen=True)
class Probe:
    bands: int
    dtype: str  # "uint8" or "uint16"


def _tifffile() -> Any:
    try:
        import tifffile
    except ImportError:
        raise ImageError("reading multi-band or 16-bit TIFF needs tifffile: pip install 'pigeon[tiff]'") from None
    return tifffile


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise ImageError("reading DICOM needs pydicom: pip install 'pigeon[dicom]'") from None
    return pydicom


def _dicom_header(path: Path) -> Any:
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises its own InvalidDicomError and many others
        raise ImageError(f"cannot be read as DICOM ({type(err).__name__}: {err})") from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageError(f"{path.name} is a colour DICOM (SamplesPerPixel {ds.SamplesPerPixel}); pigeon reads "
                         "grayscale DICOM: export it as PNG")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageError(f"{path.name} holds {ds.NumberOfFrames} frames; pigeon reads one image per file: save "
                         "each frame as its own file")
    return ds


def _first(value: Any) -> float:
    """A DICOM value that may be multi-valued (several windows): its first."""
    return float(value[0]) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else float(value)


def dicom_to_uint16(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Stored DICOM pixels -> uint16 [H, W]: modality rescale, then the file's VOI window (PS3.3 C.11.2.1.2,
    the linear function), then MONOCHROME1's inversion, with 0..65535 as the output range."""
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    x = stored.astype(np.float64) * slope + intercept
    top = 65535.0
    if "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) >= 1:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * top if w > 1 else np.where(x > c - 0.5, top, 0.0)
    else:  # no window: everything the stored bits can hold, rescaled, end to end
        bits, signed = int(ds.get("BitsStored", stored.dtype.itemsize * 8)), int(ds.get("PixelRepresentation", 0))
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        y = (x - lo) / max(hi - lo, 1e-12) * top
    y = np.clip(np.round(y), 0, top)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        y = top - y  # MONOCHROME1: the smallest value is shown white
    return y.astype(np.uint16)


def _read_dicom(path: Path) -> np.ndarray:
    _dicom_header(path)  # the colour and frame checks, with their messages
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - a compressed transfer syntax without its decoder, damaged data, ...
        raise ImageError(f"DICOM pixel data cannot be decoded ({type(err).__name__}: {err}); a compressed file "
                         "needs pydicom's decoder for its transfer syntax (e.g. pip install pylibjpeg)") from None
    return dicom_to_uint16(np.asarray(stored), ds)


def _dtype_name(dtype: np.dtype, where: str) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ImageError(f"{where} holds {name} values; pigeon reads uint8 or uint16 rasters: convert it, e.g. "
                         "np.save(path, np.clip(a * 65535, 0, 65535).astype(np.uint16)) for floats in 0..1")
    return name


def _bands_of(shape: tuple[int, ...], axes: str | None, where: str) -> tuple[int, str]:
    """The band count and layout ("HW", "HWC" or "CHW") of an array shape. A TIFF names its axes (S samples, C
    channels; Q or I for bands stored as pages); a 3-D .npy does not, so its band axis is whichever of the first
    and the last is shorter (the last on a tie): 64x64x4 and 4x64x64 are both four bands."""
    if len(shape) == 2:
        return 1, "HW"
    if len(shape) == 3:
        if axes is not None and axes[1:] == "YX" and axes[0] in "SCQI":
            layout = "CHW"
        elif axes is not None and axes[:2] == "YX" and axes[2] in "SC":
            layout = "HWC"
        elif axes is None:
            layout = "CHW" if shape[0] < shape[-1] else "HWC"
        else:
            layout = ""
        bands = shape[0] if layout == "CHW" else shape[-1]
        if layout and bands <= MAX_BANDS:
            return bands, layout
    raise ImageError(f"{where} has shape {shape}{f' (axes {axes})' if axes else ''}, not an image; give HxW, HxWxC "
                     f"or CxHxW with at most {MAX_BANDS} bands")


def _tiff_header(path: Path) -> tuple[tuple[int, ...], np.dtype, str]:
    tifffile = _tifffile()
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape), series.dtype, series.axes
    except (OSError, ValueError, IndexError) as err:
        raise ImageError(f"cannot be read as TIFF ({type(err).__name__}: {err})") from None


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header; no pickles, ever
    except (OSError, ValueError) as err:
        raise ImageError(f"cannot be read as a .npy array ({err}); save it with np.save, without objects") from None
    return tuple(arr.shape), arr.dtype


def probe(path: str | os.PathLike[str]) -> Probe | None:
    """Bands and dtype of a raster file from its header, or None when PIL decodes it as it always has (an 8-bit
    grey or RGB TIFF; any file when tifffile is missing). Raises ImageError for a file that is unusable."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".npy":
        shape, dtype = _npy_header(path)
        return Probe(_bands_of(shape, None, path.name)[0], _dtype_name(dtype, path.name))
    if ext == ".dcm":
        _dicom_header(path)
        return Probe(1, "uint16")
    if ext not in (".tif", ".tiff"):
        return None
    try:
        shape, dtype, axes = _tiff_header(path)
    except ImageError:
        return None  # without tifffile, or a TIFF tifffile cannot read: PIL's decoder has the last word
    bands = _bands_of(shape, axes, path.name)[0] if len(shape) in (2, 3) else 0
    name = np.dtype(dtype).name
    if name == "uint8" and bands in (1, 3):
        return None
    return Probe(bands, _dtype_name(dtype, path.name)) if bands else None


def read_raster(source: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
    """A .npy or TIFF file (or an array given to predict) -> [C, H, W] uint8 or uint16."""
    if isinstance(source, np.ndarray):
        arr, axes, where = source, None, "the array"
    else:
        path = Path(source)
        where = path.name
        if path.suffix.lower() == ".dcm":
            arr, axes = _read_dicom(path), None
        elif path.suffix.lower() == ".npy":
            try:
                arr, axes = np.load(path, allow_pickle=False), None
            except (OSError, ValueError) as err:
                raise ImageError(f"cannot be read as a .npy array ({err}); save it with np.save, without "
                                 "objects") from None
        else:
            tifffile = _tifffile()
            try:
                with tifffile.TiffFile(path) as tif:
                    arr, axes = tif.series[0].asarray(), tif.series[0].axes
            except (OSError, ValueError, IndexError) as err:
                raise ImageError(f"cannot be read as TIFF ({type(err).__name__}: {err})") from None
    _dtype_name(arr.dtype, where)
    bands, layout = _bands_of(tuple(arr.shape), axes, where)
    if arr.size == 0:
        raise ImageError(f"{where} has no pixels (shape {tuple(arr.shape)})")
    arr = arr[None] if layout == "HW" else arr.transpose(2, 0, 1) if layout == "HWC" else arr
    return np.ascontiguousarray(arr)


def to_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 <-> uint16 by the full range (x 257 up, / 257 down, rounded), so 255 is 65535 and back."""
    if arr.dtype == DTYPES[dtype]:
        return arr
    if dtype == "uint16":
        return arr.astype(np.uint16) * 257
    return np.round(arr / 257.0).astype(np.uint8)


def resize_raster(arr: np.ndarray, imgsz: Size, mode: str) -> np.ndarray:
    """[C, H, W] -> [C, h, w] as `resize_to` does it for PIL images, each band in float, rounded back to arr's
    dtype: the same boxes for crop, pad and stretch, and no 16-bit value squeezed through 8 bits."""
    from PIL import Image

    from pigeon.data.preprocess import resize_to

    top = np.iinfo(arr.dtype).max
    bands = [np.asarray(resize_to(Image.fromarray(band.astype(np.float32), "F"), imgsz, mode)) for band in arr]
    return np.clip(np.round(np.stack(bands)), 0, top).astype(arr.dtype)


def for_display(images: np.ndarray) -> np.ndarray:
    """[..., C, H, W] of any bands and dtype -> uint8 with 1 or 3 bands, for pictures only: 16-bit scaled by
    the full range, a raster shown by its first three bands as RGB (its first band alone when it has two)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = to_dtype(images, "uint8")
    c = images.shape[-3]
    if c not in (1, 3):
        images = images[..., :3, :, :] if c > 3 else images[..., :1, :, :]
    return images


def header_hw(path: Path) -> tuple[int, int] | None:
    """(height, width) of a raster file from its header, or None when it is not one pigeon reads as a raster."""
    try:
        kind = probe(path)
        if kind is None:
            return None
        if path.suffix.lower() == ".npy":
            shape, axes = _npy_header(path)[0], None
        elif path.suffix.lower() == ".dcm":
            ds = _dicom_header(path)
            shape, axes = (int(ds.Rows), int(ds.Columns)), None
        else:
            shape, _, axes = _tiff_header(path)
        layout = _bands_of(shape, axes, path.name)[1]
    except ImageError:
        return None
    return (shape[0], shape[1]) if layout in ("HW", "HWC") else (shape[1], shape[2])
