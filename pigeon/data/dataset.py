"""The in-memory form every source produces: uint8 image arrays per split, labels and class names."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pigeon.data.preprocess import Preprocess
from pigeon.errors import DatasetError


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, C, H, W]; may be a read-only memory map
    labels: np.ndarray  # int64 [N]
    paths: tuple[str, ...] | None = None  # source files, when the data came from files

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: np.ndarray) -> Split:
        paths = tuple(self.paths[i] for i in index) if self.paths is not None else None
        return Split(np.asarray(self.images[np.sort(index)])[np.argsort(np.argsort(index))],
                     self.labels[index], paths)


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]
    splits: dict[str, Split]
    preprocess: Preprocess
    fingerprint: str  # of the data and the resolved preprocessing: what a resumed run must find unchanged
    fliplr: float = 0.5  # a sensible default flip probability for this data (0 for digits)
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) for files left out
    notes: tuple[str, ...] = field(default=())
    cache_entry: str = ""  # the folder under the cache root that holds the decoded arrays, if any

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of each class held out, at least one, by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_held = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def with_validation(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """Give the dataset a `val` split, carving it from `train` when it has none."""
    if "val" in ds.splits or fraction == 0:
        return ds
    train = ds.splits["train"]
    counts = np.bincount(train.labels, minlength=ds.num_classes)
    if counts.min() < 2:
        small = int(counts.argmin())
        where = ds.classes[small]
        if train.paths is not None:  # name the class folder itself
            where = str(Path(train.paths[int(np.flatnonzero(train.labels == small)[0])]).parent)
        raise DatasetError(f"{where}: class {ds.classes[small]!r} has {counts.min()} training image(s): a "
                           "validation split needs at least 2 per class; add images, add a val/ folder, or pass "
                           "--val-fraction 0 (val_fraction=0 in Python)")
    keep, held = stratified_split(train.labels, fraction, seed)
    splits = {**ds.splits, "train": train.take(keep), "val": train.take(held)}
    note = (f"no val split: held out {len(held)} of {len(train)} training images "
            f"({fraction:.0%}, stratified, seed {seed}) for validation")
    return replace(ds, splits=splits, notes=(*ds.notes, note))


def channel_stats(images: np.ndarray, max_images: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from an evenly spaced sample of the images."""
    step = max(1, len(images) // max_images)
    top = float(np.iinfo(images.dtype).max) if np.issubdtype(images.dtype, np.integer) else 255.0
    sample = np.asarray(images[::step], dtype=np.float32) / top
    mean = sample.mean(axis=(0, 2, 3))
    std = np.maximum(sample.std(axis=(0, 2, 3)), 1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
