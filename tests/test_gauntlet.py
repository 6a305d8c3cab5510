"""The gauntlet: every awkward input an image folder can hold, one row of CASES each, with its exact outcome.

Each case writes its input into an otherwise good, small dataset of real digit images
(train/{a,b,c}: 3 images each, val/{a,b,c}: 2 each, 16x16 grayscale PNGs) and states what pigeon must do:

    Skipped  the file is left out, the run works, and the run's skipped.txt names the file and the reason;
             predicting on the file gives an error entry (or a DatasetError naming it), never a crash.
    Works    the file is read, and read right (EXIF rotation applied, 16-bit scaled to 8-bit, CMYK converted,
             transparency composited on white, the first frame of an animation, the centre of a long strip);
             predicting on it gives a valid prediction.
    Counts   the folder loads with exactly these image counts and nothing skipped (symlink loops).
    Raises   a DatasetError whose message starts with the offending path and says how to fix it.
    Changes  the folder changes between two runs; the cache notices and the second run sees the change.

A case whose expectation pigeon does not meet yet carries `xfail=<the bug>` and runs as a strict xfail.

Some of these are also tested one by one in tests/data/ (test_folders.py, test_preprocess.py, test_cache.py)
and tests/engine/test_predict.py; this file is the one place that lists them all, runs them through the
public entry points (load_dataset, pigeon.train, Classifier.predict) and counts them (N_CASES).

A last test builds one folder with every combinable case at once, hashes every input file, runs train, val
and predict on it, and checks that pigeon changed nothing inside the data folder and added nothing to it.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import pigeon
from pigeon.data import Dataset, load_dataset, with_validation
from pigeon.data.preprocess import image_to_array, open_image
from pigeon.engine import checkpoint
from pigeon.engine.predict import Classifier, Prediction
from pigeon.errors import DatasetError, PigeonError

CLASSES = ("a", "b", "c")
BASE = {"train": [3, 3, 3], "val": [2, 2, 2]}  # the good dataset every case starts from
FAST = {"epochs": 1, "imgsz": 16, "plots": False, "verbose": False, "device": "cpu", "amp": "off", "seed": 0}
HANG_SECONDS = 120  # a hang guard only: every test here takes a few seconds at most


class Hang(BaseException):
    """A BaseException, so pigeon's `except Exception` (one bad file -> one skip) cannot swallow it."""


@pytest.fixture(autouse=True)
def _hang_guard() -> Iterator[None]:
    if not hasattr(signal, "SIGALRM"):  # not on Windows
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"a gauntlet test ran past {HANG_SECONDS} s: something hangs")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- input makers ----------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8), "L")


def _png_declaring(width: int, height: int, tail: bytes | None = None) -> bytes:
    """A PNG whose header declares width x height (8-bit grayscale) but holds one row of pixel data: a bomb's
    header. With `tail`, the data is cut in half and `tail` follows it instead of the end chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * (1 if tail is None else height))  # filter byte + a black row
    start = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    if tail is not None:
        return start + chunk(b"IDAT", data[: len(data) // 2]) + tail
    return start + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _halves(left: Any, right: Any, mode: str, size: int = 16) -> Image.Image:
    """A size x size image, `left` in the left half and `right` in the right half."""
    img = Image.new(mode, (size, size), left)
    img.paste(right, (size // 2, 0, size, size))
    return img


# ---- builders: each writes one awkward input into the good dataset at `root` ----------------------------
# They write only into train/a and train/b (and rename c in one case), so the combinable ones can share a root.


def _zero_byte(root: Path) -> None:
    (root / "train/a/empty.png").write_bytes(b"")


def _truncated_png(root: Path) -> None:
    data = _encode(_noise(), "PNG")
    (root / "train/a/cut.png").write_bytes(data[: len(data) // 2])


def _truncated_jpeg(root: Path) -> None:
    data = _encode(_noise().convert("RGB"), "JPEG", quality=90)
    (root / "train/a/cut.jpg").write_bytes(data[: len(data) // 2])


def _broken_png_chunk(root: Path) -> None:
    # a valid header and half the pixel data, then a chunk whose name is not a chunk name
    (root / "train/a/broken-chunk.png").write_bytes(_png_declaring(16, 16, tail=b"\0\0\0\0!!!!"))


def _random_bytes(root: Path) -> None:
    (root / "train/a/noise.jpg").write_bytes(np.random.default_rng(1).bytes(500))


def _bomb_huge(root: Path) -> None:
    (root / "train/a/bomb.png").write_bytes(_png_declaring(100_000, 100_000))  # 10^10 pixels


def _bomb_over_limit(root: Path) -> None:
    # 10^8 pixels: over PIL.Image.MAX_IMAGE_PIXELS (89,478,485), under twice it (where PIL itself refuses)
    (root / "train/a/bomb2.png").write_bytes(_png_declaring(10_000, 10_000))


def _unreadable(root: Path) -> None:
    path = root / "train/a/locked.png"
    _noise(16).save(path)
    path.chmod(0)


def _dangling_symlink(root: Path) -> None:
    (root / "train/a/gone.png").symlink_to(root.parent / "nowhere" / "gone.png")


def _self_symlink(root: Path) -> None:
    (root / "train/a/self.png").symlink_to("self.png")  # a link to itself: ELOOP on open


def _not_an_image(root: Path) -> None:
    (root / "train/a/notes.txt").write_text("not an image")


def _unicode_bad_file(root: Path) -> None:
    (root / "train/b/ñandú 日本 broken file.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def _cmyk_jpeg(root: Path) -> None:
    _halves((0, 0, 0, 0), (0, 255, 255, 0), "CMYK").save(root / "train/a/cmyk.jpg", quality=95)  # white | red


def _png_16bit(root: Path) -> None:
    px = np.full((16, 16), 65535, np.uint16)
    px[:, 8:] = 32768
    Image.fromarray(px).save(root / "train/a/deep.png")


def _palette_transparent(root: Path) -> None:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    img.paste(1, (8, 0, 16, 16))
    img.save(root / "train/a/palette.png", transparency=0)  # index 0 (left half) fully transparent


def _animated_gif(root: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(root / "train/a/anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif_rotated(root: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the stored left half becomes the top half
    _halves(255, 0, "L").save(root / "train/a/rotated.jpg", exif=exif, quality=95)


def _one_pixel(root: Path) -> None:
    Image.new("L", (1, 1), 77).save(root / "train/a/dot.png")


def _wide_strip(root: Path) -> None:
    px = np.zeros((20, 20_000), np.uint8)
    px[:, 9990:10010] = 255  # white only in the middle 20 columns
    Image.fromarray(px).save(root / "train/a/wide.png")


def _tall_strip(root: Path) -> None:
    px = np.zeros((20_000, 20), np.uint8)
    px[9990:10010] = 255
    Image.fromarray(px).save(root / "train/b/tall.png")


def _wrong_extension(root: Path) -> None:
    (root / "train/b/really-a-png.jpg").write_bytes(_encode(Image.new("L", (16, 16), 123), "PNG"))


UNICODE_CLASS = "chat noir ü 日本"


def _unicode_names(root: Path) -> None:
    for split in ("train", "val"):
        (root / split / "c").rename(root / split / UNICODE_CLASS)
    Image.new("L", (16, 16), 99).save(root / "train" / UNICODE_CLASS / "é 1 ü.png")


def _symlink_loops(root: Path) -> None:
    (root / "train/a/loop").symlink_to(root / "train/a", target_is_directory=True)  # a folder to itself
    (root / "train/b/up").symlink_to(root / "train", target_is_directory=True)  # to its parent's parent
    (root / "val/a/root").symlink_to(root, target_is_directory=True)  # to the data root


def _empty_class(root: Path) -> None:
    (root / "train/d").mkdir()


def _one_class(root: Path) -> None:
    for split in ("train", "val"):
        for name in ("b", "c"):
            shutil.rmtree(root / split / name)


def _classes_differ(root: Path) -> None:
    (root / "val/c").rename(root / "val/d")


def _class_all_bad(root: Path) -> None:
    for f in (root / "val/b").iterdir():
        f.write_bytes(b"broken")


TEN_THOUSAND = 10_000


def _ten_thousand_classes(root: Path) -> None:
    """Replace the dataset by 10,000 class folders (flat layout) of one tiny 8x8 PNG each."""
    for split in ("train", "val"):
        shutil.rmtree(root / split)
    pngs = []
    for value in range(256):  # encoded once per grey level: writing 10,000 PNGs one by one takes seconds
        buffer = io.BytesIO()
        Image.new("L", (8, 8), value).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    for i in range(TEN_THOUSAND):
        folder = root / f"c{i:05d}"
        folder.mkdir()
        (folder / "x.png").write_bytes(pngs[i % 256])


def _ten_thousand_loaded(ds: Dataset) -> None:
    assert ds.num_classes == TEN_THOUSAND and ds.classes[:2] == ("c00000", "c00001")
    assert _counts(ds) == {"train": [1] * TEN_THOUSAND} and ds.skipped == ()
    assert ds.splits["train"].images.shape == (TEN_THOUSAND, 1, 16, 16)
    # the fix the error names (no val split carved) is accepted. Training all 10,000 classes for one epoch
    # then works too, but takes ~15 s of two CPUs, so it is not run here.
    assert with_validation(ds, 0.0, seed=0) is ds


def _fix_permissions(root: Path) -> None:
    (root / "train/a/locked.png").chmod(0o644)  # the user fixes what skipped.txt pointed at


def _change_between_runs(root: Path) -> None:
    Image.new("L", (16, 16), 200).save(root / "train/b/new.png")  # add
    target = root / "train/a/000.png"  # modify: new pixels, and a clearly later mtime
    Image.new("L", (16, 16), 42).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    (root / "val/c/001.png").unlink()  # delete


def _sees_the_changes(ds: Dataset, root: Path) -> None:
    train = ds.splits["train"]
    assert (train.images[train.paths.index(str(root / "train/a/000.png"))] == 42).all()  # today's pixels
    assert (train.images[train.paths.index(str(root / "train/b/new.png"))] == 200).all()
    assert str(root / "val/c/001.png") not in ds.splits["val"].paths


# ---- checks of how a Works file was read: its row of the dataset, uint8 [C, 16, 16] ---------------------


def _rgb(row: np.ndarray) -> np.ndarray:
    assert row.shape == (3, 16, 16), "a colour file makes the dataset three-channel"
    return row.astype(int)


def _cmyk_as_rgb(row: np.ndarray, path: Path) -> None:
    px = _rgb(row)
    np.testing.assert_allclose(px[:, :, :5], 255, atol=6)  # no ink: white
    np.testing.assert_allclose(px[:, :, 11:], np.broadcast_to(np.array([255, 0, 0])[:, None, None], (3, 16, 5)),
                               atol=8)  # magenta + yellow ink: red


def _png16_scaled(row: np.ndarray, path: Path) -> None:
    assert row.shape == (1, 16, 16)
    np.testing.assert_array_equal(row[0, :, :8], 255)  # 65535 / 65535 * 255
    np.testing.assert_array_equal(row[0, :, 8:], 128)  # 32768 / 65535 * 255 = 127.5 -> 128


def _palette_on_white(row: np.ndarray, path: Path) -> None:
    px = _rgb(row)
    np.testing.assert_array_equal(px[:, :, :8], 255)  # transparent: the white page
    np.testing.assert_array_equal(px[:, :, 8:], np.broadcast_to(np.array([200, 100, 50])[:, None, None], (3, 16, 8)))


def _first_frame(row: np.ndarray, path: Path) -> None:
    px = _rgb(row)
    np.testing.assert_array_equal(px, np.broadcast_to(np.array([255, 0, 0])[:, None, None], (3, 16, 16)))


def _upright(row: np.ndarray, path: Path) -> None:
    assert row.shape == (1, 16, 16)
    np.testing.assert_array_equal(row, image_to_array(open_image(path), 16, 1, "crop"))
    px = row[0].astype(float)
    # turned clockwise, the stored left (white) half is the top half; unturned it would be the left half
    assert px[:6].mean() > 230 and px[10:].mean() < 25
    assert abs(px[:, :6].mean() - px[:, 10:].mean()) < 10


def _flat_77(row: np.ndarray, path: Path) -> None:
    np.testing.assert_array_equal(row, np.full((1, 16, 16), 77, np.uint8))


def _centre_columns(row: np.ndarray, path: Path) -> None:
    # crop: the short side (20 px) -> 16, then the centre 16 x 16: only the white band survives
    assert row.shape == (1, 16, 16)
    assert (row[0, :, 1:-1] == 255).all() and (row[0] > 200).all()


def _centre_rows(row: np.ndarray, path: Path) -> None:
    assert row.shape == (1, 16, 16)
    assert (row[0, 1:-1] == 255).all() and (row[0] > 200).all()


def _flat_123(row: np.ndarray, path: Path) -> None:
    np.testing.assert_array_equal(row, np.full((1, 16, 16), 123, np.uint8))


def _flat_99(row: np.ndarray, path: Path) -> None:
    np.testing.assert_array_equal(row, np.full((1, 16, 16), 99, np.uint8))


# ---- the table ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    file: str  # relative to the data root
    reason: str  # regex, matched in full against the reason pigeon gives
    predict: str  # regex, searched in the error pigeon gives when predicting on the file


@dataclass(frozen=True)
class Works:
    file: str
    check: Callable[[np.ndarray, Path], None]  # (the file's row in the dataset, the file)


@dataclass(frozen=True)
class Counts:
    counts: dict[str, list[int]]


@dataclass(frozen=True)
class Raises:
    where: str | None  # the path (relative to the root) the message starts with; None: no path to name
    match: str  # regex for the rest of the message, with the fix
    # None: loading the folder fails. Otherwise loading works (this checks the dataset) and training refuses.
    loads: Callable[[Dataset], None] | None = None


@dataclass(frozen=True)
class Changes:
    mutate: Callable[[Path], None]  # what happens to the folder between the two runs
    before: dict[str, list[int]]
    after: dict[str, list[int]]  # image counts the second run must see (and nothing skipped then)
    then: Callable[[Dataset, Path], None] | None = None  # more checks of the second run's dataset


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], None]
    expect: Skipped | Works | Counts | Raises | Changes
    deny_unreadable: bool = False  # as root, open() must refuse unreadable files the way it would for a user
    xfail: str | None = None  # a known bug: the expectation is right, pigeon is not (yet)

    @property
    def combinable(self) -> bool:
        """Can share one dataset with the other combinable cases (for the end-to-end and hashing test)."""
        return isinstance(self.expect, (Skipped, Works, Counts)) and not self.deny_unreadable


_UNDECODABLE = r"UnidentifiedImageError: cannot identify image file"
_NO_SUCH = r"DatasetError: .*: no such file or folder"

CASES: list[Case] = [
    # -- bad files: skipped and reported
    Case("zero-byte", _zero_byte,
         Skipped("train/a/empty.png", r"empty file \(0 bytes\)", _UNDECODABLE)),
    Case("truncated-png", _truncated_png,
         Skipped("train/a/cut.png", r"cannot be decoded \(OSError: image file is truncated\)",
                 r"OSError: image file is truncated")),
    Case("truncated-jpeg", _truncated_jpeg,
         Skipped("train/a/cut.jpg",
                 r"cannot be decoded \(OSError: image file is truncated \(\d+ bytes not processed\)\)",
                 r"OSError: image file is truncated")),
    Case("png-broken-chunk", _broken_png_chunk,
         Skipped("train/a/broken-chunk.png", r"cannot be decoded \(SyntaxError: broken PNG file \(chunk b'!!!!'\)\)",
                 r"SyntaxError: broken PNG file")),
    Case("random-bytes-as-jpg", _random_bytes,
         Skipped("train/a/noise.jpg", r"cannot be decoded \(UnidentifiedImageError: cannot identify image file "
                 r"'.*noise\.jpg'\)", _UNDECODABLE)),
    Case("decompression-bomb-10^10-pixels", _bomb_huge,
         Skipped("train/a/bomb.png", r"cannot be decoded \(DecompressionBombError: Image size \(10000000000 pixels\) "
                 r"exceeds limit of \d+ pixels, could be decompression bomb DOS attack\.\)",
                 r"DecompressionBombError: .*decompression bomb")),
    # (under the test suite's warnings-as-errors PIL's warning is what refuses it; in normal use pigeon's check)
    Case("decompression-bomb-10^8-pixels", _bomb_over_limit,
         Skipped("train/a/bomb2.png", r"cannot be decoded \((DecompressionBombWarning|ValueError): .*"
                 r"decompression bomb.*\)", r"(DecompressionBombWarning|ValueError): .*decompression bomb")),
    Case("unreadable-no-permission", _unreadable,
         Skipped("train/a/locked.png", r"cannot be decoded \(PermissionError: \[Errno 13\] Permission denied: "
                 r"'.*locked\.png'\)", r"PermissionError: \[Errno 13\] Permission denied"),
         deny_unreadable=True),
    Case("dangling-symlink", _dangling_symlink,
         Skipped("train/a/gone.png", r"cannot be decoded \(FileNotFoundError: \[Errno 2\] No such file or directory: "
                 r"'.*gone\.png'\)", _NO_SUCH)),
    Case("symlink-to-itself", _self_symlink,
         Skipped("train/a/self.png", r"cannot be decoded \(OSError: \[Errno 40\] Too many levels of symbolic links: "
                 r"'.*self\.png'\)", _NO_SUCH)),
    Case("not-an-image-extension", _not_an_image,
         Skipped("train/a/notes.txt", r"not an image file \(extension \.txt\)", _UNDECODABLE)),
    Case("unicode-named-bad-file", _unicode_bad_file,
         Skipped("train/b/ñandú 日本 broken file.png", r"cannot be decoded \(UnidentifiedImageError: cannot identify "
                 r"image file '.*ñandú 日本 broken file\.png'\)", _UNDECODABLE)),
    # -- awkward but valid files: read, and read right
    Case("cmyk-jpeg", _cmyk_jpeg, Works("train/a/cmyk.jpg", _cmyk_as_rgb)),
    Case("16-bit-png", _png_16bit, Works("train/a/deep.png", _png16_scaled)),
    Case("palette-png-transparency", _palette_transparent, Works("train/a/palette.png", _palette_on_white)),
    Case("animated-gif", _animated_gif, Works("train/a/anim.gif", _first_frame)),
    Case("exif-rotated-jpeg", _exif_rotated, Works("train/a/rotated.jpg", _upright)),
    Case("1x1", _one_pixel, Works("train/a/dot.png", _flat_77)),
    Case("20000x20", _wide_strip, Works("train/a/wide.png", _centre_columns)),
    Case("20x20000", _tall_strip, Works("train/b/tall.png", _centre_rows)),
    Case("png-named-jpg", _wrong_extension, Works("train/b/really-a-png.jpg", _flat_123)),
    Case("unicode-and-spaces-in-paths", _unicode_names, Works(f"train/{UNICODE_CLASS}/é 1 ü.png", _flat_99)),
    Case("symlink-loops", _symlink_loops, Counts(BASE)),
    # -- folders that cannot make a classifier: a DatasetError naming the path and the fix
    Case("empty-class", _empty_class,
         Raises("train/d", r" holds no images \(.*\); add images to it or remove the empty folder")),
    Case("one-class-only", _one_class,
         Raises("train", r" has a single class \('a'\); a classifier needs at least two class folders")),
    Case("classes-differ-train-val", _classes_differ,
         Raises("val", r": classes differ from train/ \(missing: \['c'\], extra: \['d'\]\); make both folders hold "
                r"the same class folders")),
    Case("every-image-of-a-class-bad", _class_all_bad,
         Raises("val", r": class folder\(s\) \['b'\] have no readable image after skipping bad files; add images "
                r"or remove the folder\(s\)")),
    Case("10000-classes-one-image-each", _ten_thousand_classes,
         Raises(None, r"class 'c00000' has 1 training image\(s\): a validation split needs at least 2 per class; "
                r"add images, add a val/ folder, or pass --val-fraction 0", loads=_ten_thousand_loaded)),
    # -- a folder that changes between two runs: the cache notices
    Case("changes-between-runs", lambda root: None,
         Changes(_change_between_runs, before=BASE, after={"train": [3, 4, 3], "val": [2, 2, 1]},
                 then=_sees_the_changes)),
    Case("unreadable-file-fixed-between-runs", _unreadable,
         Changes(_fix_permissions, before=BASE, after={"train": [4, 3, 3], "val": [2, 2, 2]}),
         deny_unreadable=True),
]
N_CASES = len(CASES)


def test_the_table_counts_at_least_19_distinct_cases() -> None:
    ids = [c.id for c in CASES]
    assert len(set(ids)) == N_CASES >= 19
    inputs = [(c.build, getattr(c.expect, "mutate", None)) for c in CASES]
    assert len(set(inputs)) == N_CASES  # no two cases feed pigeon the same thing
    kinds = {type(c.expect).__name__ for c in CASES}
    assert kinds == {"Skipped", "Works", "Counts", "Raises", "Changes"}


# ---- running a case ----------------------------------------------------------------------------------------



def _deny_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any file; make open() refuse files without read permission, as the kernel does for a user."""
    if os.geteuid() != 0:
        return
    real_open = builtins.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, bytes, os.PathLike)) and "r" in mode:
            try:
                unreadable = os.stat(file).st_mode & 0o444 == 0
            except OSError:
                unreadable = False
            if unreadable:
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


def _load(root: Path, cache_dir: Path) -> Dataset:
    return load_dataset(str(root), imgsz=16, cache_dir=str(cache_dir), verbose=False)


def _train(root: Path, tmp_path: Path, cache_dir: Path, **kw: Any) -> Any:
    return pigeon.train(str(root), **{**FAST, **kw}, project=str(tmp_path / "runs"), cache_dir=str(cache_dir))


def _counts(ds: Dataset) -> dict[str, list[int]]:
    return {s: np.bincount(sp.labels, minlength=ds.num_classes).tolist() for s, sp in ds.splits.items()}


def _skipped_txt(run_dir: Path) -> list[tuple[str, str]]:
    path = run_dir / "skipped.txt"
    if not path.exists():
        return []
    return [tuple(line.split("\t", 1)) for line in path.read_text(encoding="utf-8").splitlines()]  # type: ignore[misc]


def _skipped_paths(run_dir: Path) -> list[str]:
    return [p for p, _ in _skipped_txt(run_dir)]


def _predict_outcome(clf: Classifier, path: Path) -> Prediction | str:
    """A valid Prediction, or the text of the error pigeon gave: an error entry or a PigeonError."""
    try:
        pred = clf.predict(path)
    except PigeonError as err:
        return f"{type(err).__name__}: {err}"
    assert isinstance(pred, Prediction) and pred.source == str(path)
    return pred.error if pred.error is not None else pred


def _valid(pred: Prediction | str, clf: Classifier) -> None:
    assert isinstance(pred, Prediction), f"expected a prediction, got the error {pred!r}"
    assert pred.probs is not None and np.isfinite(pred.probs).all()
    assert float(pred.probs.sum()) == pytest.approx(1.0, abs=1e-5) and pred.label in clf.classes


def _run_skipped(exp: Skipped, root: Path, tmp_path: Path, cache_dir: Path, clf: Classifier) -> None:
    path = str(root / exp.file)
    ds = _load(root, cache_dir)
    assert _counts(ds) == BASE
    assert [p for p, _ in ds.skipped] == [path]
    assert re.fullmatch(exp.reason, ds.skipped[0][1]), ds.skipped
    assert all(path not in (sp.paths or ()) for sp in ds.splits.values())
    run = _train(root, tmp_path, cache_dir)
    assert run.best.is_file() and run.val is not None and run.val["n"] == sum(BASE["val"])  # the run works
    listed = _skipped_txt(run.run_dir)
    assert listed == [(path, ds.skipped[0][1])]  # ... and its skipped.txt names the file and the reason
    outcome = _predict_outcome(clf, root / exp.file)
    assert isinstance(outcome, str) and re.search(exp.predict, outcome), outcome


def _run_works(exp: Works, root: Path, cache_dir: Path, clf: Classifier) -> None:
    path = root / exp.file
    ds = _load(root, cache_dir)
    assert ds.skipped == ()
    train = ds.splits["train"]
    i = train.paths.index(str(path))
    assert ds.classes[train.labels[i]] == path.parent.name
    want = {s: list(c) for s, c in BASE.items()}
    want["train"][ds.classes.index(path.parent.name)] += 1
    assert _counts(ds) == want
    exp.check(np.asarray(train.images[i]), path)
    _valid(_predict_outcome(clf, path), clf)


def _run_raises(exp: Raises, root: Path, tmp_path: Path, cache_dir: Path) -> None:
    message = (re.escape(str(root / exp.where)) if exp.where is not None else "") + exp.match
    if exp.loads is None:
        with pytest.raises(DatasetError, match=message):
            _load(root, cache_dir)
    else:
        exp.loads(_load(root, cache_dir))  # the folder itself is fine ...
    with pytest.raises(DatasetError, match=message):  # ... and training says the same, before any run folder
        _train(root, tmp_path, cache_dir)
    assert not (tmp_path / "runs").exists()


def _run_changes(exp: Changes, root: Path, tmp_path: Path, cache_dir: Path) -> None:
    first = _train(root, tmp_path, cache_dir)
    ds1 = _load(root, cache_dir)
    assert _counts(ds1) == exp.before and first.val is not None and first.val["n"] == sum(exp.before["val"])
    assert [p for p, _ in ds1.skipped] == _skipped_paths(first.run_dir)
    exp.mutate(root)
    second = _train(root, tmp_path, cache_dir)
    fp1 = checkpoint.read(first.best)[1]["data"]["fingerprint"]
    fp2 = checkpoint.read(second.best)[1]["data"]["fingerprint"]
    assert fp1 == ds1.fingerprint and fp2 != fp1  # the cache noticed ...
    assert second.val is not None and second.val["n"] == sum(exp.after["val"])  # ... and the run saw the change
    ds2 = _load(root, cache_dir)
    assert ds2.fingerprint == fp2 and _counts(ds2) == exp.after and ds2.skipped == ()
    assert _skipped_paths(second.run_dir) == []
    if exp.then is not None:
        exp.then(ds2, root)
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([ds1.cache_entry, ds2.cache_entry])  # old kept


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
    for c in CASES])
def test_gauntlet(case: Case, digits_folder: Callable[..., Path], tmp_path: Path, cache_dir: Path,
                  monkeypatch: pytest.MonkeyPatch, tiny_clf: Classifier) -> None:
    root = digits_folder(splits=("train", "val"), per_class={"train": 3, "val": 2}, classes=CLASSES)
    case.build(root)
    if case.deny_unreadable:
        _deny_unreadable(monkeypatch)
    exp = case.expect
    if isinstance(exp, Skipped):
        _run_skipped(exp, root, tmp_path, cache_dir, tiny_clf)
    elif isinstance(exp, Works):
        _run_works(exp, root, cache_dir, tiny_clf)
    elif isinstance(exp, Counts):
        ds = _load(root, cache_dir)
        assert _counts(ds) == exp.counts and ds.skipped == ()
        assert all(len(set(sp.paths)) == len(sp.paths) for sp in ds.splits.values())  # nothing counted twice
        preds = tiny_clf.predict(root)  # predict's folder walk terminates too, and does not follow the loops
        assert isinstance(preds, list) and len(preds) == sum(map(sum, exp.counts.values()))
    elif isinstance(exp, Raises):
        _run_raises(exp, root, tmp_path, cache_dir)
    else:
        _run_changes(exp, root, tmp_path, cache_dir)


def test_too_few_images_for_a_val_split_names_the_folder(digits_folder: Callable[..., Path], cache_dir: Path) -> None:
    root = digits_folder(splits=None, per_class=1, classes=("a", "b"))
    ds = _load(root, cache_dir)
    with pytest.raises(DatasetError, match=re.escape(str(root / "a"))):
        with_validation(ds, 0.1, seed=0)


# ---- everything at once: pigeon changes nothing it reads -------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root (links not followed) -> (kind, sha256 or link target, mode, mtime_ns)."""
    out: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(top) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mode, st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None, st.st_mode, st.st_mtime_ns)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns,
                            st.st_size)
    return out


def test_every_case_at_once_and_pigeon_changes_no_input_file(digits_folder: Callable[..., Path], tmp_path: Path,
                                                            cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "val"), per_class={"train": 3, "val": 2}, classes=CLASSES)
    combined = [c for c in CASES if c.combinable]
    assert len(combined) >= 20
    for case in combined:
        case.build(root)
    before = _snapshot(root)
    kinds = [kind for kind, *_ in before.values()]
    assert (kinds.count("file"), kinds.count("link")) == (15 + 19, 5)  # 15 digits, 19 awkward files; 5 symlinks

    run = _train(root, tmp_path, cache_dir)
    skipped = [c.expect for c in combined if isinstance(c.expect, Skipped)]
    works = [c.expect for c in combined if isinstance(c.expect, Works)]
    listed = dict(_skipped_txt(run.run_dir))
    assert sorted(listed) == sorted(str(root / s.file) for s in skipped)
    for s in skipped:
        assert re.fullmatch(s.reason, listed[str(root / s.file)]), (s.file, listed[str(root / s.file)])
    ds = _load(root, cache_dir)  # training's cache entry
    assert ds.fingerprint == checkpoint.read(run.best)[1]["data"]["fingerprint"]
    assert ds.preprocess.channels == 3  # the colour files make it three-channel
    assert len(ds.splits["train"]) == sum(BASE["train"]) + len(works)
    assert {str(root / w.file) for w in works} <= set(ds.splits["train"].paths)

    report = pigeon.val(run.best, str(root), cache_dir=str(cache_dir), project=str(tmp_path / "val"), plots=False,
                        verbose=False)
    assert report["split"] == "val" and report["n"] == sum(BASE["val"])
    clf = pigeon.load(run.best, device="cpu")
    by_folder = clf.predict(root)
    assert isinstance(by_folder, list)
    singles = [_predict_outcome(clf, root / w.file) for w in works] + [
        _predict_outcome(clf, root / s.file) for s in skipped]
    assert sum(isinstance(p, Prediction) for p in singles) == len(works)

    after = _snapshot(root)
    assert sorted(after) == sorted(before), "pigeon added or removed something inside the data folder"
    changed = [k for k in before if after[k] != before[k]]
    assert changed == [], f"pigeon changed these inputs: {changed}"
    assert {p.name for p in cache_dir.iterdir()} == {ds.cache_entry}  # the decoded arrays live in cache_dir only
    assert json.loads((run.run_dir / "config.json").read_text())["data"] == str(root)
