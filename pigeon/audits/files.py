"""Walk an image folder the way pigeon's loader does, and look at every file once: bytes, header, pixels.

The walk is lenient where `pigeon train` is strict: a class missing from one split, an empty class folder or
a single class is a finding to report, not a reason to stop. Nothing here writes anywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.data.folders import SPLITS, _class_dirs, _list_files
from pigeon.data.preprocess import IMAGE_EXTENSIONS, image_to_array, open_image, to_standard_mode

SIGNATURE_SIZE = 32  # the DCT of a 32x32 grayscale image, as pHash takes it
SIGNATURE_FREQS = 8  # its lowest 8x8 frequencies, less the mean (DC): 63 numbers
BLANK_STD = 1.0  # grey levels of coarse structure below which an image counts as blank (a single colour)


@dataclass(frozen=True)
class Entry:
    path: Path
    split: str
    label: int


@dataclass
class Listing:
    root: Path
    layout: str  # "splits" (root/<split>/<class>/...) or "classes" (root/<class>/...)
    classes: tuple[str, ...]
    entries: list[Entry]
    skipped: list[tuple[Entry | None, Path, str]]  # files that are not images (Entry None: in no class), with why
    problems: list[str]  # layout findings pigeon train would refuse


def walk(root: Path) -> Listing:
    """Every image file under `root` with its split and class; what pigeon train would refuse, as problems."""
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    problems = []
    if split_dirs and "train" not in split_dirs:
        problems.append(f"{root} has {'/'.join(split_dirs)}/ but no train/ folder: pigeon train refuses this "
                        "layout; add train/<class>/...")
    layout = "splits" if split_dirs else "classes"
    split_dirs = split_dirs or {"train": root}
    per_split = {s: [p.name for p in _class_dirs(d)] for s, d in split_dirs.items()}
    classes = tuple(sorted({c for names in per_split.values() for c in names}))
    if len(classes) < 2:
        problems.append(f"{root} has {len(classes)} class folder(s) {list(classes)}: a classifier needs at least "
                        "two, one folder per class")
    for split, names in per_split.items():
        missing = sorted(set(classes) - set(names))
        if missing:
            problems.append(f"{split_dirs[split]} lacks class folder(s) {missing} that other splits have: "
                            "pigeon train refuses splits whose classes differ; add them or remove the extra ones")
    listing = Listing(root, layout, classes, [], [], problems)
    for split, split_dir in split_dirs.items():
        _add_files(listing, split, split_dir, per_split[split])
    return listing


def _add_files(listing: Listing, split: str, split_dir: Path, class_names: list[str]) -> None:
    for loose in sorted(p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        listing.skipped.append((None, loose, "not inside a class folder, so it has no label; pigeon ignores it"))
    for name in class_names:
        found = 0
        for path in _list_files(split_dir / name):
            entry = Entry(path, split, listing.classes.index(name))
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                listing.entries.append(entry)
                found += 1
            else:
                listing.skipped.append((entry, path, f"not an image file (extension {path.suffix or 'none'})"))
        if not found:
            listing.problems.append(f"{split_dir / name} holds no images: pigeon train refuses an empty class "
                                    "folder; add images or remove it")


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: dct(x) = D @ x, and the 2-D transform of an image g is D @ g @ D.T."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float64)


_DCT = dct_matrix(SIGNATURE_SIZE)


def signature(gray: np.ndarray) -> np.ndarray:
    """A perceptual signature of a 32x32 grayscale image: its 63 lowest non-DC DCT coefficients, unit length.

    These are the numbers a 64-bit pHash binarises against their median. Keeping their values instead of
    their signs is what tells a re-encoded copy (distance ~0.02) from a different picture that merely looks
    alike (rarely under 0.08): on small images such as digits, binarised hashes of different samples collide
    by the hundreds. A brightness shift moves only the mean, which is left out, and a contrast change scales
    every coefficient alike, which unit length ignores. A blank image has no structure: the zero vector.
    """
    coeffs = (_DCT @ gray.astype(np.float64) @ _DCT.T)[:SIGNATURE_FREQS, :SIGNATURE_FREQS].ravel()[1:]
    norm = float(np.linalg.norm(coeffs))
    # The transform keeps energy, so norm / 32 is the standard deviation (in grey levels) of the image's coarse
    # structure; under one grey level the image is blank and its direction would be compression noise.
    if norm < BLANK_STD * SIGNATURE_SIZE:
        return np.zeros_like(coeffs, dtype=np.float32)
    return (coeffs / norm).astype(np.float32)


@dataclass
class Inspection:
    """What the audit knows about each readable image, row-aligned with `entries`."""

    entries: list[Entry]
    sha256: list[str]
    width: np.ndarray
    height: np.ndarray
    nbytes: np.ndarray
    mode: list[str]  # the file's own PIL mode (L, RGB, RGBA, P, I;16, CMYK, ...)
    format: list[str]
    gray: np.ndarray  # bool: decodes to grayscale (L) rather than RGB
    signature: np.ndarray  # float32 [N, 63]
    pixels: np.ndarray  # uint8 [N, 3, imgsz, imgsz]: centre-cropped as pigeon's default resize does
    unreadable: list[tuple[Entry, str]]


def _look(path: Path, imgsz: int) -> dict[str, Any] | str:
    """Read one file (read-only) and describe it, or say why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt, mode = header.format or "?", header.mode
        img = to_standard_mode(open_image(data))  # open_image refuses decompression bombs
        gray = np.asarray(img.convert("L").resize((SIGNATURE_SIZE, SIGNATURE_SIZE), Image.Resampling.LANCZOS))
        pixels = image_to_array(img, imgsz, 3, "crop")
    except UnidentifiedImageError:
        return "cannot be decoded (not an image format PIL knows, or a corrupt header)"
    except Exception as err:  # noqa: BLE001 - any decoder failure means: report this file and say why
        return f"cannot be decoded ({type(err).__name__}: {err})"
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": img.size, "nbytes": len(data), "mode": mode,
            "format": fmt, "gray": img.mode == "L", "signature": signature(gray), "pixels": pixels}


def inspect(entries: list[Entry], imgsz: int, tick: Callable[[], None] = lambda: None) -> Inspection:
    """Look at every entry once, in threads (PIL and hashlib release the GIL)."""
    ok: list[tuple[Entry, dict[str, Any]]] = []
    unreadable: list[tuple[Entry, str]] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for entry, seen in zip(entries, pool.map(lambda e: _look(e.path, imgsz), entries, chunksize=16)):
            tick()
            if isinstance(seen, str):
                unreadable.append((entry, seen))
            else:
                ok.append((entry, seen))
    rows = [s for _, s in ok]
    return Inspection(
        entries=[e for e, _ in ok], sha256=[s["sha256"] for s in rows],
        width=np.array([s["size"][0] for s in rows], dtype=np.int64),
        height=np.array([s["size"][1] for s in rows], dtype=np.int64),
        nbytes=np.array([s["nbytes"] for s in rows], dtype=np.int64),
        mode=[s["mode"] for s in rows], format=[s["format"] for s in rows],
        gray=np.array([s["gray"] for s in rows], dtype=bool),
        signature=np.stack([s["signature"] for s in rows]) if rows else np.zeros((0, 63), np.float32),
        pixels=np.stack([s["pixels"] for s in rows]) if rows else np.zeros((0, 3, imgsz, imgsz), np.uint8),
        unreadable=unreadable)
