"""Data: sources (image folders, built-ins) -> uint8 arrays in a cache -> batches augmented on the device."""

from __future__ import annotations

from pathlib import Path

from pigeon.data.builtins import BUILTINS, load_builtin
from pigeon.data.dataset import Dataset, Split, with_validation
from pigeon.data.folders import load_folder
from pigeon.data.preprocess import Preprocess
from pigeon.errors import DatasetError, did_you_mean

DEFAULT_FOLDER_IMGSZ = 64

__all__ = ["BUILTINS", "Dataset", "Preprocess", "Split", "load_dataset", "with_validation"]


def load_dataset(data: str, *, imgsz: int | None = None, channels: int | None = None, resize: str = "crop",
                 cache_dir: str | None = None, verbose: bool = True) -> Dataset:
    """A built-in name (fashion-mnist, digits) or a folder of class subfolders -> Dataset."""
    if data in BUILTINS and not Path(data).exists():
        return load_builtin(data, imgsz=imgsz, channels=channels, resize=resize, cache_dir=cache_dir,
                            verbose=verbose)
    if not Path(data).expanduser().exists():
        hint = did_you_mean(data, BUILTINS)
        raise DatasetError(f"{data}: no such folder, and not a built-in dataset{hint}; "
                           f"built-ins are {', '.join(BUILTINS)}")
    return load_folder(data, imgsz=imgsz or DEFAULT_FOLDER_IMGSZ, channels=channels, resize=resize,
                       cache_dir=cache_dir, verbose=verbose)
