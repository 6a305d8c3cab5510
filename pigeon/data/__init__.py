"""Data: sources (image folders, built-ins) -> uint8 arrays in a cache -> batches augmented on the device."""

from __future__ import annotations

import dataclasses
import statistics
import warnings
from pathlib import Path

from pigeon.config import Size
from pigeon.data.builtins import BUILTINS, load_builtin
from pigeon.data.dataset import Dataset, Split, with_validation
from pigeon.data.folders import load_folder, scan
from pigeon.data.preprocess import Preprocess
from pigeon.errors import DatasetError, did_you_mean

DEFAULT_FOLDER_IMGSZ = 64  # the most an image folder is trained at unless --imgsz says otherwise
SIZE_SAMPLE = 256  # image headers read to learn a folder's native size

__all__ = ["BUILTINS", "Dataset", "Preprocess", "Split", "load_dataset", "with_validation"]


def load_dataset(data: str, *, imgsz: Size | None = None, channels: int | None = None, resize: str = "crop",
                 cache_dir: str | None = None, verbose: bool = True, task: str = "auto") -> Dataset:
    """A built-in name (fashion-mnist, digits), a folder of class subfolders or a labels CSV -> Dataset.

    `task`: "auto" (a CSV is multi-label, anything else single-label), "multiclass" or "multilabel" (a folder
    where one image may sit in several class folders)."""
    if data in BUILTINS and not Path(data).exists():
        if task == "multilabel":
            raise DatasetError(f"{data} is a single-label built-in; --task multilabel needs a labels CSV or a folder "
                               "whose images may sit in several class folders")
        return load_builtin(data, imgsz=imgsz, channels=channels, resize=resize, cache_dir=cache_dir,
                            verbose=verbose)
    path = Path(data).expanduser()
    if not path.exists():
        hint = did_you_mean(data, BUILTINS)
        raise DatasetError(f"{data}: no such folder, and not a built-in dataset{hint}; "
                           f"built-ins are {', '.join(BUILTINS)}")
    if path.is_file() and path.suffix.lower() == ".csv" or task == "multilabel":
        return _load_multilabel(path, task, imgsz=imgsz, channels=channels, resize=resize, cache_dir=cache_dir,
                                verbose=verbose)
    note = None
    scanned = scan(path)  # once: listing a folder of 10,000 classes takes seconds
    if imgsz is None:
        imgsz, note = folder_imgsz(Path(data).expanduser(), resize, files=scanned[1])
    ds = load_folder(data, imgsz=imgsz, channels=channels, resize=resize, cache_dir=cache_dir, verbose=verbose,
                     scanned=scanned)
    return dataclasses.replace(ds, notes=(*ds.notes, note)) if note else ds


def _load_multilabel(path: Path, task: str, *, imgsz: Size | None, channels: int | None, resize: str,
                     cache_dir: str | None, verbose: bool) -> Dataset:
    from pigeon.data.multilabel import group_folder, load_multilabel, read_labels_csv

    if path.is_file() and task == "multiclass":
        raise DatasetError(f"{path}: a labels CSV trains a multi-label model (--task multilabel or auto); for "
                           "one label per image give a folder of class subfolders")
    if path.is_file():
        listed, notes = read_labels_csv(path), []
    else:
        *found, grouped = group_folder(path)
        listed, notes = tuple(found), [grouped]
    if imgsz is None:
        imgsz, note = folder_imgsz(path, resize, files=listed[1])
        notes.append(note)
    return load_multilabel(path, listed, imgsz=imgsz, channels=channels, resize=resize,  # type: ignore[arg-type]
                           cache_dir=cache_dir, verbose=verbose, notes=tuple(notes))


def folder_imgsz(root: Path, resize: str = "crop", cap: int = DEFAULT_FOLDER_IMGSZ,
                 files: dict[str, list[tuple[Path, int]]] | None = None) -> tuple[int, str]:
    """The default input size for an image folder, and why: its images' own size when they are small (an 8x8
    glyph is not upscaled to 64), else `cap`, which keeps training on a CPU to minutes.

    The size is the median, over up to SIZE_SAMPLE training images spread over the classes, of the side that
    `resize` maps to the input (the shorter for crop, the longer for pad and stretch); only headers are read.
    `files` is the folder's `scan`, when the caller has it.
    """
    if files is None:
        _, files, _ = scan(root)
    train = files["train"]
    pick = train[:: max(1, len(train) // SIZE_SAMPLE)][:SIZE_SAMPLE]
    sides = [s for s in (_side(path, resize) for path, _ in pick) if s]
    if not sides:  # nothing readable in the sample: decoding will say what is wrong with the files
        return cap, f"imgsz {cap}: the folder default (--imgsz to change it)"
    native = int(statistics.median(sides))
    which = "shorter" if resize == "crop" else "longer"
    if native <= cap:
        return max(8, native), (f"imgsz {max(8, native)}: the images' own size (median {which} side of "
                                f"{len(sides)} sampled), so nothing is upscaled; --imgsz to change it")
    return cap, (f"imgsz {cap}: the images are larger (median {which} side {native} px) and {cap} px keeps "
                 "training fast; --imgsz to train bigger")


def _side(path: Path, resize: str) -> int | None:
    from PIL import Image

    from pigeon.data.rasters import RASTER_EXTENSIONS, header_hw

    hw = header_hw(path) if path.suffix.lower() in RASTER_EXTENSIONS else None
    if hw is not None:
        return min(hw) if resize == "crop" else max(hw)
    try:
        with warnings.catch_warnings():  # a decompression-bomb warning: decoding skips that file, with a reason
            warnings.simplefilter("ignore")
            with Image.open(path) as img:  # reads the header only
                w, h = img.size
    except Exception:  # noqa: BLE001 - unreadable files are skipped and reported by the decoder, not here
        return None
    return min(w, h) if resize == "crop" else max(w, h)
