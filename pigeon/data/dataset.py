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
    labels: np.ndarray  # int64 [N] class indices; for a multi-label dataset, uint8 [N, K] multi-hot rows
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
    task: str = "multiclass"  # or "multilabel": any number of classes per image (pigeon.data.multilabel)

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
    if ds.task == "multilabel":
        return _multilabel_validation(ds, fraction, seed)
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


def _multilabel_validation(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded random hold-out: per-class stratification has no single answer when an image has several
    classes, so the split only checks that every class keeps a positive in train and, where it can, in val."""
    train = ds.splits["train"]
    n = len(train)
    n_held = min(n - 1, max(1, round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    keep, held = np.sort(order[n_held:]), np.sort(order[:n_held])
    lost = [ds.classes[k] for k in np.flatnonzero(train.labels[keep].sum(0) == 0)]
    if lost:
        raise DatasetError(f"{ds.name}: class(es) {lost} have too few training images to hold out a validation "
                           "split and keep one for training; add images, give a `split` column (or val/ folder), "
                           "or pass --val-fraction 0")
    note = (f"no val split: held out {n_held} of {n} training images ({fraction:.0%}, random, seed {seed}) for "
            "validation")
    absent = [ds.classes[k] for k in np.flatnonzero(train.labels[held].sum(0) == 0)]
    if absent:
        note += (f"; {len(absent)} class(es) have no image in it ({', '.join(absent[:5])}), so their threshold "
                 "stays 0.5")
    return replace(ds, splits={**ds.splits, "train": train.take(keep), "val": train.take(held)},
                   notes=(*ds.notes, note))


def channel_stats(images: np.ndarray, max_images: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from an evenly spaced sample of the images."""
    step = max(1, len(images) // max_images)
    top = float(np.iinfo(images.dtype).max) if np.issubdtype(images.dtype, np.integer) else 255.0
    sample = np.asarray(images[::step], dtype=np.float32) / top
    mean = sample.mean(axis=(0, 2, 3))
    std = np.maximum(sample.std(axis=(0, 2, 3)), 1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def to_model_labels(labels: np.ndarray, data_classes: tuple[str, ...] | list[str],
                    model_classes: list[str]) -> np.ndarray:
    """A dataset's labels in the model's class order, matched by name ([N] indices or [N, K] multi-hot rows)."""
    to_model = np.array([list(model_classes).index(c) for c in data_classes], dtype=np.int64)
    if labels.ndim == 1:
        return to_model[labels]
    rows = np.zeros((len(labels), len(model_classes)), dtype=labels.dtype)
    rows[:, to_model] = labels
    return rows
