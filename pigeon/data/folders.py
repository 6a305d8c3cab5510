"""Image folders: root/{train,val,test}/<class>/**/<image>, or root/<class>/** for a train split alone."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.config import Size, size_hw
from pigeon.data import cache
from pigeon.data.dataset import Dataset, Split, channel_stats
from pigeon.data.preprocess import FILE_EXTENSIONS, Preprocess, image_to_array, is_grayscale, open_image
from pigeon.data.rasters import DTYPES, RASTER_EXTENSIONS, Probe, probe, read_raster, resize_raster, to_dtype
from pigeon.errors import DatasetError, describe
from pigeon.progress import progress

SPLITS = ("train", "val", "test")


def _list_files(class_dir: Path) -> list[Path]:
    # os.walk without following links: a symlink loop cannot trap the scan.
    found = []
    for top, dirs, files in os.walk(class_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(top) / f for f in sorted(files) if not f.startswith("."))
    return found


def _class_dirs(split_dir: Path) -> list[Path]:
    # scandir's entries know their type without a stat each, and names sort far faster than Paths (Path
    # comparison dominated listing a folder of 10,000 classes).
    with os.scandir(split_dir) as entries:
        names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    return [split_dir / name for name in names]


Scan = tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]], list[tuple[str, str]]]


def scan(root: Path) -> Scan:
    """Find classes and files per split; returns (classes, {split: [(path, label)]}, skipped)."""
    if not root.exists():
        raise DatasetError(f"{root}: no such folder; give a folder of class subfolders or a built-in "
                           "dataset name (see `pigeon datasets`)")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a folder; give the folder that holds train/ "
                           "(or the class subfolders)")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" not in split_dirs:
        if split_dirs:
            raise DatasetError(f"{root} has {'/'.join(split_dirs)}/ but no train/ folder; add train/<class>/...")
        split_dirs = {"train": root}
    classes = tuple(p.name for p in _class_dirs(split_dirs["train"]))
    if not classes:
        raise DatasetError(f"{split_dirs['train']} has no class subfolders; put the images of each class in "
                           "their own folder, e.g. train/cat/1.jpg, train/dog/2.jpg")
    if len(classes) < 2:
        raise DatasetError(f"{split_dirs['train']} has a single class ({classes[0]!r}); a classifier needs at "
                           "least two class folders")
    files: dict[str, list[tuple[Path, int]]] = {}
    skipped: list[tuple[str, str]] = []
    for split, split_dir in split_dirs.items():
        names = tuple(p.name for p in _class_dirs(split_dir))
        if names != classes:
            missing = sorted(set(classes) - set(names))
            extra = sorted(set(names) - set(classes))
            raise DatasetError(f"{split_dir}: classes differ from train/ (missing: {missing or 'none'}, "
                               f"extra: {extra or 'none'}); make both folders hold the same class folders")
        files[split] = []
        for label, name in enumerate(classes):
            images = []
            for path in _list_files(split_dir / name):
                if path.suffix.lower() in FILE_EXTENSIONS:
                    images.append((path, label))
                else:
                    skipped.append((str(path), f"not an image file (extension {path.suffix or 'none'})"))
            if not images:
                raise DatasetError(f"{split_dir / name} holds no images ({', '.join(sorted(FILE_EXTENSIONS))});"
                                   " add images to it or remove the empty folder")
            files[split].extend(images)
    return classes, files, skipped


def _stat(path: Path) -> tuple[int, int, int]:
    # The mode is in the key because a permission fix changes neither size nor mtime, yet makes a skipped
    # file readable: the cache must notice it.
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns, st.st_mode
    except OSError:
        return -1, -1, -1


def _decode(path: Path, imgsz: Size, channels: int, resize: str) -> tuple[np.ndarray | None, bool, str]:
    if _stat(path)[0] == 0:
        return None, False, "empty file (0 bytes)"
    try:
        img = open_image(path)
        return image_to_array(img, imgsz, channels, resize), is_grayscale(img), ""
    except Exception as err:  # noqa: BLE001 - any decoder failure means: skip this file and say why
        return None, False, f"cannot be decoded ({describe(err)})"


def _decode_raster(path: Path, imgsz: Size, kind: Probe, resize: str) -> tuple[np.ndarray | None, bool, str]:
    """One file of a raster folder -> [bands, H, W] in the folder's dtype; PIL's formats join in as 1 or 3 bands."""
    if _stat(path)[0] == 0:
        return None, False, "empty file (0 bytes)"
    try:
        if path.suffix.lower() == ".npy" or probe(path) is not None:
            arr = resize_raster(read_raster(path), imgsz, resize)
        elif kind.bands in (1, 3):
            arr = image_to_array(open_image(path), imgsz, kind.bands, resize)
        else:
            return None, False, (f"an 8-bit {path.suffix or 'image'} file of 1 or 3 channels, but this folder's "
                                 f"rasters have {kind.bands} bands; save it as .npy or TIFF with {kind.bands}")
    except Exception as err:  # noqa: BLE001 - any decoder failure means: skip this file and say why
        return None, False, f"cannot be decoded ({describe(err)})"
    if arr.shape[0] != kind.bands:
        return None, False, (f"has {arr.shape[0]} band(s), but this folder's rasters have {kind.bands}; give every "
                             "image the same bands")
    return to_dtype(arr, kind.dtype), False, ""


def raster_kind(files: dict[str, list[tuple[Path, int]]]) -> tuple[Probe | None, str]:
    """The bands and dtype of a folder that needs the raster path (any .npy, or a TIFF that is not 8-bit grey or
    RGB), from headers: the bands of the first such training file, uint16 if any file is 16-bit. (None, "")
    for a folder PIL decodes as always."""
    import importlib.util

    found: list[tuple[Probe, Path]] = []
    for split in ("train", *(s for s in files if s != "train")):
        for path, _ in files.get(split, []):
            if path.suffix.lower() == ".dcm" and importlib.util.find_spec("pydicom") is None:
                raise DatasetError(f"{path}: DICOM files need pydicom: pip install 'pigeon[dicom]' (or remove the "
                                   ".dcm files)")
            if path.suffix.lower() in RASTER_EXTENSIONS:
                try:
                    kind = probe(path)
                except Exception:  # noqa: BLE001 - an unreadable file is skipped, with its reason, when decoded
                    kind = None
                if kind is not None:
                    found.append((kind, path))
    if not found:
        return None, ""
    dtype = "uint16" if any(k.dtype == "uint16" for k, _ in found) else "uint8"
    return Probe(found[0][0].bands, dtype), str(found[0][1])


THREADED_DECODE_BYTES = 8 * 1024  # median file size from which decoding in threads pays


def decode_workers(files: dict[str, list[tuple[Path, int]]], sample: int = 256) -> int:
    """Threads to decode a folder with: PIL frees the GIL while it decodes and resizes, so files of some size
    decode faster on every core; a small file is mostly Python around the codec, which holds the GIL, so threads
    only contend for it and make the build slower. The size where they start to pay is measured by
    benchmarks/decode.py."""
    items = [path for split in files.values() for path, _ in split]
    picked = items[:: max(1, len(items) // sample)][:sample]
    sizes = sorted(_stat(path)[0] for path in picked)
    if not sizes or sizes[len(sizes) // 2] < THREADED_DECODE_BYTES:
        return 1
    return min(8, os.cpu_count() or 1)


def _build(tmp: Path, root: Path, files: dict[str, list[tuple[Path, int]]], imgsz: Size,
           channels: int | None, resize: str, verbose: bool,
           kind: Probe | None = None) -> tuple[list[str], dict[str, Any]]:
    """Decode every file once. With `channels` None the entry keeps the data's own channel count (1 when every
    file is grayscale, else 3); a given count is decoded exactly as `predict` will convert a file. With a raster
    `kind` every file is decoded band by band to its bands and dtype."""
    names: list[str] = []
    meta: dict[str, Any] = {"skipped": [], "paths": {}, "all_gray": True}
    total = sum(len(v) for v in files.values())
    bar = progress(total=total, desc="decoding images (once; cached)", unit="img", enabled=verbose)
    workers = decode_workers(files)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split, items in files.items():
            out = np.lib.format.open_memmap(tmp / f"{split}_rgb.npy", mode="w+",
                                            dtype=DTYPES[kind.dtype] if kind else np.uint8,
                                            shape=(len(items), kind.bands if kind else channels or 3,
                                                   *size_hw(imgsz)))
            labels, paths, n = [], [], 0

            def decode(it: tuple[Path, int]) -> tuple[np.ndarray | None, bool, str]:
                if kind is not None:
                    return _decode_raster(it[0], imgsz, kind, resize)
                return _decode(it[0], imgsz, channels or 3, resize)

            decoded = pool.map(decode, items) if workers > 1 else map(decode, items)
            for (path, label), (arr, gray, why) in zip(items, decoded):
                bar.update(1)
                relative = str(path.relative_to(root))
                if arr is None:
                    meta["skipped"].append((relative, why))
                    continue
                out[n] = arr
                n += 1
                labels.append(label)
                paths.append(relative)  # relative: the entry outlives a moved folder
                meta["all_gray"] &= gray
            out.flush()
            meta["paths"][split] = paths
            np.save(tmp / f"{split}_labels.npy", np.asarray(labels, dtype=np.int64))
            meta[f"{split}_n"] = n
    bar.close()
    # A grayscale file converted to RGB repeats its one channel, so the first of three is exactly its L image.
    keep = kind.bands if kind else channels or (1 if meta["all_gray"] else 3)
    for split in files:
        rgb = np.load(tmp / f"{split}_rgb.npy", mmap_mode="r")[: meta[f"{split}_n"]]
        np.save(tmp / f"{split}_images.npy", np.ascontiguousarray(rgb[:, :keep]))
        del rgb
        (tmp / f"{split}_rgb.npy").unlink()
        names += [f"{split}_images", f"{split}_labels"]
    meta["channels"] = keep
    meta["dtype"] = kind.dtype if kind else "uint8"
    return names, meta


def decode_files(root: Path, classes: tuple[str, ...], files: dict[str, list[tuple[Path, int]]], *, imgsz: Size,
                 channels: int | None, resize: str, cache_dir: str | None, verbose: bool,
                 key_extra: tuple[Any, ...] = ()) -> tuple[dict[str, np.ndarray], dict[str, Any], str, str]:
    """Every listed file decoded once, through the cache: (arrays, meta, entry, data_key). Arrays are
    `<split>_images` and `<split>_labels` (the int each file was listed with) of the files that decoded.
    `key_extra` joins the cache key: what else, beyond the listing, the entry stands for (multi-label targets)."""
    listing = [(s, str(p.relative_to(root)), lbl, *_stat(p)) for s, items in files.items() for p, lbl in items]
    store = cache.cache_root(cache_dir)
    # The entry and the fingerprint depend on the data and on what the preprocessing resolves to, never on how
    # an option was spelled: `channels=None` on grayscale data and `channels=1` are the same run (issue 16).
    kind, first = raster_kind(files)
    if kind is not None and channels not in (None, kind.bands):
        raise DatasetError(f"{root}: its images have {kind.bands} bands (e.g. {first}); --channels must be "
                           f"{kind.bands} or left unset for rasters (.npy, multi-band or 16-bit TIFF)")
    raster = [("raster", kind.bands, kind.dtype)] if kind else []  # what an 8-bit L/RGB folder's key never had
    data_key = cache.fingerprint(["folder", classes, listing, imgsz, resize, *raster, *key_extra])
    found = cache.load(store, data_key) if channels else None  # decoded before without --channels?
    if found is not None and found[1]["channels"] == channels:
        (arrays, meta), entry = found, data_key
    elif channels:  # a count the data does not have on its own: decoded the way predict converts each file
        entry = cache.fingerprint([data_key, "channels", channels])
        arrays, meta, _ = cache.load_or_build(store, entry, lambda tmp: _build(
            tmp, root, files, imgsz, channels, resize, verbose, kind))
    else:
        entry = data_key
        arrays, meta, _ = cache.load_or_build(store, entry, lambda tmp: _build(
            tmp, root, files, imgsz, None, resize, verbose, kind))
    return arrays, meta, entry, data_key


def load_folder(root: str | os.PathLike[str], *, imgsz: Size, channels: int | None, resize: str,
                cache_dir: str | None, verbose: bool = True, scanned: Scan | None = None) -> Dataset:
    """`scanned`: this folder's `scan(root)`, when the caller already listed it."""
    root = Path(root).expanduser()
    classes, files, skipped = scanned or scan(root)
    skipped = list(skipped)
    arrays, meta, entry, data_key = decode_files(root, classes, files, imgsz=imgsz, channels=channels,
                                                 resize=resize, cache_dir=cache_dir, verbose=verbose)
    skipped += [(str(root / p), why) for p, why in meta["skipped"]]
    splits = {}
    for split in files:
        labels = np.array(arrays[f"{split}_labels"], dtype=np.int64)  # small: keep a writable copy
        if len(labels) == 0:
            raise DatasetError(f"{root / split}: none of its images could be decoded; see the skipped list")
        missing = [c for i, c in enumerate(classes) if not (labels == i).any()]
        if missing:
            raise DatasetError(f"{root / split}: class folder(s) {missing} have no readable image after "
                               "skipping bad files; add images or remove the folder(s)")
        paths = tuple(str(root / p) for p in meta["paths"][split])
        splits[split] = Split(arrays[f"{split}_images"], labels, paths)
    mean, std = channel_stats(splits["train"].images)
    spec = Preprocess(imgsz=imgsz, channels=meta["channels"], resize=resize, mean=mean, std=std,
                      dtype=meta.get("dtype", "uint8"))
    return Dataset(name=root.name, classes=classes, splits=splits, preprocess=spec,
                   fingerprint=cache.fingerprint([data_key, "channels", meta["channels"]]),
                   skipped=tuple(skipped), cache_entry=entry)  # type: ignore[arg-type]
