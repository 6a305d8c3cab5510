"""Multi-label data: any number of classes per image, as multi-hot uint8 rows [N, K].

Two sources. A labels CSV (columns `file,labels` and an optional `split`; labels separated by `;`; paths relative
to the CSV), or an image folder laid out as for single-label training where one image may sit in several class
folders: copies with the same bytes are one image with all their folders' classes.

Decoding goes through the same cache as any folder: each file is listed with its row number, and the rows'
targets join the cache key, so changing a label makes a new entry and a new run fingerprint.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from pigeon.config import Size
from pigeon.data import cache
from pigeon.data.dataset import Dataset, Split, channel_stats
from pigeon.data.folders import SPLITS, _stat, decode_files, scan
from pigeon.data.preprocess import FILE_EXTENSIONS, Preprocess
from pigeon.errors import DatasetError

SEPARATOR = ";"
Files = dict[str, list[tuple[Path, int]]]  # split -> [(file, row)]; row indexes the split's targets
Targets = dict[str, np.ndarray]  # split -> uint8 [rows, K]


def read_labels_csv(path: Path) -> tuple[tuple[str, ...], Files, Targets, list[tuple[str, str]]]:
    """(classes, files, targets, skipped) from a labels CSV; a listed file that is missing or not an image is
    skipped with its reason, anything malformed is an error naming the line and the fix."""
    root = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: cannot be read as a CSV file ({err}); save it as UTF-8 text with a header "
                           "row file,labels") from None
    if "file" not in fields or "labels" not in fields:
        raise DatasetError(f"{path}: its header row must name the columns file and labels (and optionally split), "
                           f"e.g. `file,labels` then `img/1.png,cat;dog`; found {fields or 'no header'}")
    entries: dict[str, list[tuple[Path, list[str]]]] = defaultdict(list)
    first_line: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    for line, row in enumerate(rows, start=2):
        name, split = row.get("file", ""), (row.get("split") or "train").lower()
        if not name:
            raise DatasetError(f"{path}:{line}: the file column is empty; give each row an image path")
        if split not in SPLITS:
            raise DatasetError(f"{path}:{line}: split {row.get('split')!r} is not one of {', '.join(SPLITS)}; "
                               "fix the value or leave the column empty (train)")
        relative = os.path.normpath(name)
        if os.path.isabs(relative) or relative.split(os.sep)[0] == "..":
            raise DatasetError(f"{path}:{line}: {name} is outside the CSV's folder {root}; paths are relative to "
                               "the CSV, so put the CSV in a folder that holds the images")
        if relative in first_line:
            raise DatasetError(f"{path}:{line}: {name} is listed again (first on line {first_line[relative]}); give "
                               f"each image one row with all its labels separated by {SEPARATOR!r}")
        first_line[relative] = line
        file = root / relative
        if file.suffix.lower() not in FILE_EXTENSIONS:
            skipped.append((str(file), f"not an image file (extension {file.suffix or 'none'})"))
            continue
        if not file.is_file():
            skipped.append((str(file), f"listed on line {line} of {path.name} but not found"))
            continue
        labels = sorted({label.strip() for label in row.get("labels", "").split(SEPARATOR) if label.strip()})
        entries[split].append((file, labels))
    if not entries.get("train"):
        raise DatasetError(f"{path}: no training image found (rows with split train or empty, whose files exist); "
                           "see the paths it lists")
    classes = tuple(sorted({label for _, labels in entries["train"] for label in labels}))
    if not classes:
        raise DatasetError(f"{path}: no training row has a label; list each image's classes in the labels column, "
                           f"separated by {SEPARATOR!r}")
    for split, items in entries.items():
        unseen = sorted({label for _, labels in items for label in labels} - set(classes))
        if unseen:
            raise DatasetError(f"{path}: the {split} rows name class(es) {unseen[:5]} that no train row has; a model "
                               "cannot learn a class it never sees: label some training images with them")
    index = {c: k for k, c in enumerate(classes)}
    files: Files = {}
    targets: Targets = {}
    for split in (s for s in SPLITS if s in entries):
        items = entries[split]
        files[split] = [(file, row) for row, (file, _) in enumerate(items)]
        targets[split] = _multi_hot([[index[label] for label in labels] for _, labels in items], len(classes))
    return classes, files, targets, skipped


def group_folder(root: Path) -> tuple[tuple[str, ...], Files, Targets, list[tuple[str, str]], str]:
    """(classes, files, targets, skipped, note) for a class-folder tree where copies of one image (same bytes)
    in several class folders make one image with all those classes."""
    classes, listed, skipped = scan(root)
    files: Files = {}
    targets: Targets = {}
    copies = shared = 0
    for split, items in listed.items():
        stat = {path: _stat(path)[0] for path, _ in items}
        sizes = Counter(stat.values())
        groups: dict[object, tuple[Path, set[int]]] = {}
        for path, label in items:
            size = stat[path]
            # Only files whose size another shares can be copies, so only those are read and hashed.
            key: object = (size, _digest(path)) if size > 0 and sizes[size] > 1 else path
            first, labels = groups.setdefault(key, (path, set()))
            labels.add(label)
        files[split] = [(path, row) for row, (path, _) in enumerate(groups.values())]
        targets[split] = _multi_hot([sorted(labels) for _, labels in groups.values()], len(classes))
        copies += len(items) - len(groups)
        shared += int((targets[split].sum(1) > 1).sum())
    note = (f"multi-label folder: {shared} image(s) sit in 2 or more class folders (same bytes; {copies} extra "
            "copies read as one image each)")
    return classes, files, targets, skipped, note


def load_multilabel(source: Path, listed: tuple[tuple[str, ...], Files, Targets, list[tuple[str, str]]], *,
                    imgsz: Size, channels: int | None, resize: str, cache_dir: str | None, verbose: bool = True,
                    notes: tuple[str, ...] = ()) -> Dataset:
    """A labels CSV or a class-folder tree -> a multi-label Dataset, from its read_labels_csv or group_folder
    listing (classes, files, targets, skipped)."""
    root = source.parent if source.is_file() else source
    classes, files, targets, skipped = listed
    digest = hashlib.sha256(b"".join(targets[s].tobytes() for s in files)).hexdigest()
    arrays, meta, entry, data_key = decode_files(root, classes, files, imgsz=imgsz, channels=channels,
                                                 resize=resize, cache_dir=cache_dir, verbose=verbose,
                                                 key_extra=("multilabel", digest))
    skipped = [*skipped, *((str(root / p), why) for p, why in meta["skipped"])]
    splits = {}
    for split in files:
        rows = np.asarray(arrays[f"{split}_labels"], dtype=np.int64)
        if len(rows) == 0:
            raise DatasetError(f"{source}: none of the {split} images could be decoded; see the skipped list")
        labels = targets[split][rows]
        splits[split] = Split(arrays[f"{split}_images"], labels, tuple(str(root / p) for p in meta["paths"][split]))
    never = [classes[k] for k in np.flatnonzero(splits["train"].labels.sum(0) == 0)]
    if never:
        raise DatasetError(f"{source}: class(es) {never[:5]} have no readable training image after skipping bad "
                           "files; add images or drop the label")
    mean, std = channel_stats(splits["train"].images)
    spec = Preprocess(imgsz=imgsz, channels=meta["channels"], resize=resize, mean=mean, std=std,
                      dtype=meta.get("dtype", "uint8"))
    return Dataset(name=root.name, classes=classes, splits=splits, preprocess=spec,
                   fingerprint=cache.fingerprint([data_key, "channels", meta["channels"]]), skipped=tuple(skipped),
                   notes=notes, cache_entry=entry, task="multilabel")


def _multi_hot(rows: list[list[int]], num_classes: int) -> np.ndarray:
    out = np.zeros((len(rows), num_classes), dtype=np.uint8)
    for i, row in enumerate(rows):
        out[i, row] = 1
    return out


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return str(path)  # unreadable: its own group, skipped with a reason when decoded
