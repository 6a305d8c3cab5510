"""Image folders: layouts, extensions, channel detection, bad files, errors, a val split, read-only data."""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pigeon.data import Dataset, load_dataset, with_validation
from pigeon.data.preprocess import IMAGE_EXTENSIONS, image_to_array, open_image
from pigeon.errors import DatasetError


def _load(root: Path, cache_dir: Path, **kw: object) -> Dataset:
    kw.setdefault("imgsz", 16)
    return load_dataset(str(root), cache_dir=str(cache_dir), verbose=False, **kw)  # type: ignore[arg-type]


def _at(path: Path, rest: str) -> str:
    """A regex for an error message that starts with `path` (escaped) followed by the regex `rest`."""
    return re.escape(str(path)) + rest


def _counts(ds: Dataset, split: str) -> list[int]:
    return np.bincount(ds.splits[split].labels, minlength=ds.num_classes).tolist()


def _tree(root: Path) -> dict[str, str]:
    """Every path under root -> a sha256 of its bytes ('dir' for folders, the target for links)."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(top) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---- layouts ---------------------------------------------------------------------------------------------


def test_train_val_test_layout(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "val", "test"), per_class={"train": 5, "val": 3, "test": 2},
                         classes=("cat", "dog", "emu"))
    ds = _load(root, cache_dir)
    assert ds.name == "data" and ds.classes == ("cat", "dog", "emu") and ds.num_classes == 3
    assert sorted(ds.splits) == ["test", "train", "val"]
    assert [_counts(ds, s) for s in ("train", "val", "test")] == [[5, 5, 5], [3, 3, 3], [2, 2, 2]]
    train = ds.splits["train"]
    assert train.images.shape == (15, 1, 16, 16) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    assert train.paths is not None and len(train.paths) == 15
    # every row is exactly its source file put through the preprocessing contract, with the right label
    for img, label, path in zip(train.images, train.labels, train.paths, strict=True):
        assert Path(path).parent.name == ds.classes[label]
        np.testing.assert_array_equal(img, image_to_array(open_image(path), 16, 1, "crop"))
    assert ds.preprocess.imgsz == 16 and ds.preprocess.channels == 1 and ds.preprocess.resize == "crop"
    assert ds.skipped == () and ds.notes == ()


def test_flat_layout_is_a_train_split(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=None, per_class=4, classes=("a", "b"))
    ds = _load(root, cache_dir)
    assert list(ds.splits) == ["train"] and ds.classes == ("a", "b") and _counts(ds, "train") == [4, 4]


def test_nested_subfolders_belong_to_their_class(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))
    deep = root / "train" / "a" / "2024" / "batch 1"
    deep.mkdir(parents=True)
    Image.new("L", (16, 16), 7).save(deep / "x.png")
    ds = _load(root, cache_dir)
    assert _counts(ds, "train") == [3, 2]
    i = ds.splits["train"].paths.index(str(deep / "x.png"))
    assert ds.splits["train"].labels[i] == 0 and (ds.splits["train"].images[i] == 7).all()


def test_hidden_files_and_folders_are_ignored(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))
    Image.new("L", (16, 16)).save(root / "train" / "a" / ".hidden.png")
    (root / "train" / ".thumbs").mkdir()  # not a class
    (root / "train" / "a" / ".git").mkdir()
    Image.new("L", (16, 16)).save(root / "train" / "a" / ".git" / "x.png")
    (root / "train" / "b" / ".DS_Store").write_bytes(b"\0\1junk")
    ds = _load(root, cache_dir)
    assert ds.classes == ("a", "b") and _counts(ds, "train") == [2, 2] and ds.skipped == ()


def test_extensions_are_case_insensitive(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=1, classes=("a", "b"))
    Image.new("L", (16, 16), 50).save(root / "train" / "a" / "up.PNG", format="PNG")
    Image.new("L", (16, 16), 60).save(root / "train" / "b" / "mixed.JpG", format="JPEG")
    ds = _load(root, cache_dir)
    assert _counts(ds, "train") == [2, 2] and ds.skipped == ()
    names = {Path(p).name for p in ds.splits["train"].paths}
    assert {"up.PNG", "mixed.JpG"} <= names


def test_every_listed_extension_loads(tmp_path: Path, cache_dir: Path) -> None:
    formats = Image.registered_extensions()
    root = tmp_path / "exts"
    for label, value in (("dark", 40), ("light", 200)):
        folder = root / label
        folder.mkdir(parents=True)
        for ext in sorted(IMAGE_EXTENSIONS):
            Image.new("L", (16, 16), value).save(folder / f"img{ext}", format=formats[ext])
    ds = _load(root, cache_dir)
    assert ds.skipped == ()
    assert _counts(ds, "train") == [len(IMAGE_EXTENSIONS)] * 2
    images, labels = ds.splits["train"].images, ds.splits["train"].labels
    # (channels are 3 here: WebP has no grayscale mode and GIF stores a palette, so they count as colour)
    # lossless and lossy formats alike decode to (about) the flat value written
    assert np.abs(images[labels == 0].astype(int) - 40).max() <= 2
    assert np.abs(images[labels == 1].astype(int) - 200).max() <= 2


def test_unicode_and_spaces_in_paths(digits_folder, tmp_path: Path, cache_dir: Path) -> None:
    root = digits_folder(tmp_path / "my data ü 日本", per_class=2, classes=("chat noir", "狗", "ñandú"))
    Image.new("L", (16, 16), 9).save(root / "train" / "狗" / "é 1 ü.png")
    ds = _load(root, cache_dir)
    assert ds.classes == ("chat noir", "ñandú", "狗")  # sorted by name
    assert _counts(ds, "train") == [2, 2, 3]
    assert str(root / "train" / "狗" / "é 1 ü.png") in ds.splits["train"].paths


def test_symlink_loop_inside_a_class_does_not_hang(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=3, classes=("a", "b"))
    (root / "train" / "a" / "loop").symlink_to(root / "train" / "a", target_is_directory=True)
    (root / "train" / "b" / "up").symlink_to(root / "train", target_is_directory=True)
    result: list[Dataset] = []
    worker = threading.Thread(target=lambda: result.append(_load(root, cache_dir)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "scanning a folder with a symlink loop did not finish"
    assert _counts(result[0], "train") == [3, 3]


def test_a_moved_folder_reports_its_new_paths(digits_folder, tmp_path: Path, cache_dir: Path) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))
    (root / "train" / "a" / "bad.png").write_bytes(b"\x89PNG garbage")
    first = _load(root, cache_dir)
    moved = root.rename(tmp_path / "moved")
    again = _load(moved, cache_dir)
    assert again.fingerprint == first.fingerprint  # the same data: the cache entry is reused ...
    paths = again.splits["train"].paths
    assert all(Path(p).is_file() and p.startswith(str(moved)) for p in paths)  # ... with today's paths
    assert [p for p, _ in again.skipped] == [str(moved / "train" / "a" / "bad.png")]


# ---- channels --------------------------------------------------------------------------------------------


def test_grayscale_folder_gets_one_channel(digits_folder, cache_dir: Path) -> None:
    ds = _load(digits_folder(per_class=2, ext=".jpg"), cache_dir)
    assert ds.preprocess.channels == 1 and ds.splits["train"].images.shape[1] == 1
    assert len(ds.preprocess.mean) == 1 and len(ds.preprocess.std) == 1


def test_one_colour_image_makes_three_channels(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "val"), per_class=2, classes=("a", "b"))
    Image.new("RGB", (16, 16), (250, 10, 10)).save(root / "val" / "b" / "red.png")
    ds = _load(root, cache_dir)
    assert ds.preprocess.channels == 3 and len(ds.preprocess.mean) == 3
    for split in ("train", "val"):
        assert ds.splits[split].images.shape[1] == 3
    val = ds.splits["val"]
    red = val.images[val.paths.index(str(root / "val" / "b" / "red.png"))]
    np.testing.assert_array_equal(red[:, 0, 0], [250, 10, 10])
    gray = ds.splits["train"].images[0]
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # grayscale images replicated


def test_explicit_channels_override_detection(digits_folder, tmp_path: Path, cache_dir: Path) -> None:
    gray_root = digits_folder(per_class=2)
    assert _load(gray_root, cache_dir, channels=3).splits["train"].images.shape[1] == 3
    colour_root = digits_folder(tmp_path / "colour", per_class=2, mode="RGB")
    assert _load(colour_root, cache_dir).preprocess.channels == 3
    ds = _load(colour_root, cache_dir, channels=1)
    assert ds.preprocess.channels == 1 and ds.splits["train"].images.shape[1] == 1


# ---- bad files -------------------------------------------------------------------------------------------


def test_bad_files_are_skipped_and_listed(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=3, classes=("a", "b"))
    a, b = root / "train" / "a", root / "train" / "b"
    png = (b / "000.png").read_bytes()
    jpeg = io.BytesIO()
    open_image(png).convert("RGB").resize((64, 64)).save(jpeg, "JPEG", quality=90)
    jpeg = jpeg.getvalue()
    (a / "empty.png").write_bytes(b"")
    (a / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (b / "cut.png").write_bytes(png[: len(png) // 2])
    (b / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (a / "notes.txt").write_text("not an image")
    (b / "README").write_text("no extension")
    ds = _load(root, cache_dir)
    assert _counts(ds, "train") == [3, 3]
    reasons = dict(ds.skipped)
    assert sorted(reasons) == sorted(str(p) for p in (a / "empty.png", a / "cut.jpg", b / "cut.png",
                                                      b / "noise.jpg", a / "notes.txt", b / "README"))
    assert reasons[str(a / "empty.png")] == "empty file (0 bytes)"
    assert reasons[str(a / "notes.txt")] == "not an image file (extension .txt)"
    assert reasons[str(b / "README")] == "not an image file (extension none)"
    assert reasons[str(a / "cut.jpg")].startswith("cannot be decoded (OSError: ")
    assert reasons[str(b / "cut.png")].startswith("cannot be decoded (")
    assert reasons[str(b / "noise.jpg")].startswith("cannot be decoded (UnidentifiedImageError:")
    assert not any(p in reasons for p in ds.splits["train"].paths)
    # the list is the same when the decoded arrays come from the cache
    assert dict(_load(root, cache_dir).skipped) == reasons


def test_decompression_bomb_is_skipped(digits_folder, cache_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))
    Image.new("L", (64, 64)).save(root / "train" / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 16x16 is fine, 64x64 is "a bomb"
    ds = _load(root, cache_dir)
    assert _counts(ds, "train") == [2, 2]
    [(path, why)] = ds.skipped
    assert path == str(root / "train" / "a" / "huge.png") and "decompression bomb" in why


# ---- errors ----------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path, cache_dir: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=_at(missing, ": no such folder")):
        _load(missing, cache_dir)
    with pytest.raises(DatasetError, match="did you mean 'digits'"):
        load_dataset("digit", cache_dir=str(cache_dir), verbose=False)


def test_a_file_instead_of_a_folder(tmp_path: Path, cache_dir: Path) -> None:
    f = tmp_path / "data.png"
    Image.new("L", (4, 4)).save(f)
    with pytest.raises(DatasetError, match=_at(f, " is a file, not a folder")):
        _load(f, cache_dir)


def test_no_class_folders(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "d" / "train").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "d" / "train" / "loose.png")
    with pytest.raises(DatasetError, match=_at(tmp_path / "d" / "train", " has no class subfolders")):
        _load(tmp_path / "d", cache_dir)


def test_empty_class_folder(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=2, classes=("a", "b"))
    (root / "train" / "c").mkdir()
    with pytest.raises(DatasetError, match=_at(root / "train" / "c", " holds no images")):
        _load(root, cache_dir)
    (root / "train" / "c" / "notes.txt").write_text("only text")
    with pytest.raises(DatasetError, match=_at(root / "train" / "c", " holds no images")):
        _load(root, cache_dir)


def test_single_class(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(per_class=2, classes=("only",))
    with pytest.raises(DatasetError, match=r"single class \('only'\).*at least two"):
        _load(root, cache_dir)


def test_train_val_class_mismatch(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "val"), per_class=2, classes=("a", "b", "c"))
    (root / "val" / "c").rename(root / "val" / "d")
    msg = _at(root / "val", r": classes differ from train/ \(missing: \['c'\], extra: \['d'\]\)")
    with pytest.raises(DatasetError, match=msg):
        _load(root, cache_dir)


def test_every_image_of_a_class_unreadable(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "val"), per_class=2, classes=("a", "b"))
    for f in (root / "val" / "b").iterdir():
        f.write_bytes(b"broken")
    msg = _at(root / "val", r": class folder\(s\) \['b'\] have no readable image")
    with pytest.raises(DatasetError, match=msg):
        _load(root, cache_dir)


def test_every_image_of_a_split_unreadable(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "test"), per_class=2, classes=("a", "b"))
    for f in (root / "test").rglob("*.png"):
        f.write_bytes(b"")
    with pytest.raises(DatasetError, match=_at(root / "test", ": none of its images could be decoded")):
        _load(root, cache_dir)


def test_val_without_train(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("val", "test"), per_class=2, classes=("a", "b"))
    with pytest.raises(DatasetError, match=_at(root, " has val/test/ but no train/ folder")):
        _load(root, cache_dir)


# ---- a validation split carved from train ----------------------------------------------------------------


def test_with_validation_is_stratified_and_seeded(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=None, per_class=10, classes=("a", "b", "c"))
    ds = _load(root, cache_dir)
    split = with_validation(ds, 0.2, seed=0)
    assert _counts(split, "train") == [8, 8, 8] and _counts(split, "val") == [2, 2, 2]
    assert split.notes == ("no val split: held out 6 of 30 training images (20%, stratified, seed 0) "
                           "for validation",)
    train, val = split.splits["train"], split.splits["val"]
    assert not set(train.paths) & set(val.paths)
    assert set(train.paths) | set(val.paths) == set(ds.splits["train"].paths)
    # images, labels and paths stay aligned after the split
    by_path = {p: (img, lbl) for p, img, lbl in zip(ds.splits["train"].paths, ds.splits["train"].images,
                                                      ds.splits["train"].labels, strict=True)}
    for sp in (train, val):
        for p, img, lbl in zip(sp.paths, sp.images, sp.labels, strict=True):
            np.testing.assert_array_equal(img, by_path[p][0])
            assert lbl == by_path[p][1]
    again = with_validation(_load(root, cache_dir), 0.2, seed=0)
    assert again.splits["val"].paths == val.paths
    other = with_validation(ds, 0.2, seed=1)
    assert other.splits["val"].paths != val.paths and _counts(other, "val") == [2, 2, 2]


def test_with_validation_keeps_a_real_val_split(digits_folder, cache_dir: Path) -> None:
    ds = _load(digits_folder(splits=("train", "val"), per_class=3), cache_dir)
    assert with_validation(ds, 0.2, seed=0) is ds
    flat = _load(digits_folder(splits=None, per_class=3), cache_dir)
    assert with_validation(flat, 0.0, seed=0) is flat


def test_with_validation_holds_at_least_one_and_leaves_at_least_one(digits_folder, cache_dir: Path) -> None:
    ds = _load(digits_folder(splits=None, per_class={"train": 2}, classes=("a", "b")), cache_dir)
    split = with_validation(ds, 0.01, seed=0)
    assert _counts(split, "train") == [1, 1] and _counts(split, "val") == [1, 1]
    split = with_validation(ds, 0.99, seed=0)
    assert _counts(split, "train") == [1, 1] and _counts(split, "val") == [1, 1]


def test_with_validation_needs_two_images_per_class(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=None, per_class=3, classes=("a", "b"))
    for f in sorted((root / "b").iterdir())[1:]:
        f.unlink()
    ds = _load(root, cache_dir)
    with pytest.raises(DatasetError, match="class 'b' has 1 training image"):
        with_validation(ds, 0.2, seed=0)


# ---- the user's folder stays untouched -------------------------------------------------------------------


def test_loading_writes_nothing_into_the_dataset(digits_folder, cache_dir: Path) -> None:
    root = digits_folder(splits=("train", "val"), per_class=3, classes=("a", "b"))
    (root / "train" / "a" / "broken.jpg").write_bytes(b"nope")
    (root / "train" / "b" / "notes.txt").write_text("x")
    before = _tree(root)
    mtimes = {p: os.stat(root / p).st_mtime_ns for p in before}
    for kw in ({}, {}, {"imgsz": 8}, {"channels": 3}):  # builds, a cache hit, then two more builds
        _load(root, cache_dir, **kw)
    assert _tree(root) == before
    assert {p: os.stat(root / p).st_mtime_ns for p in before} == mtimes
    assert any(cache_dir.iterdir())  # the cache went where it was told


def test_small_files_decode_in_one_thread_and_large_ones_in_threads(tmp_path: Path) -> None:
    from pigeon.data.folders import THREADED_DECODE_BYTES, decode_workers

    small, large = tmp_path / "small.png", tmp_path / "large.jpg"
    small.write_bytes(b"x" * 300)
    large.write_bytes(b"x" * THREADED_DECODE_BYTES)
    assert decode_workers({"train": [(small, 0)] * 9 + [(large, 1)]}) == 1  # the median decides, not one file
    assert decode_workers({"train": [(large, 0)] * 9 + [(small, 1)]}) == min(8, os.cpu_count() or 1)
