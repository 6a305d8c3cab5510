"""Multi-label data: the labels CSV (every malformed input refused by line, missing files skipped with a reason),
folders whose images sit in several class folders, the cache key, the validation hold-out and mixing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mosaics import write_mosaics

from pigeon.data import load_dataset, with_validation
from pigeon.data.mix import MixParams, mix
from pigeon.errors import DatasetError


def _csv(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "labels.csv"
    path.write_text(text)
    return path


@pytest.fixture
def mosaics(tmp_path: Path) -> Path:
    return write_mosaics(tmp_path / "m", {"train": 40, "val": 12, "test": 12})


def test_a_labels_csv_loads_as_multi_hot_rows_in_its_splits(mosaics: Path, cache_dir: Path) -> None:
    ds = load_dataset(str(mosaics), cache_dir=str(cache_dir), verbose=False)
    assert ds.task == "multilabel" and ds.classes == tuple(str(d) for d in range(10))
    assert set(ds.splits) == {"train", "val", "test"}
    rows = [line.split(",") for line in mosaics.read_text().splitlines()[1:]]
    for split in ds.splits.values():
        assert split.labels.dtype == np.uint8 and split.labels.shape == (len(split), 10)
        for path, row in zip(split.paths or (), split.labels):
            truth = next(labels for file, labels, _ in rows if path.endswith(file))
            assert [ds.classes[k] for k in np.flatnonzero(row)] == truth.split(";")
    assert ds.preprocess.imgsz == 16 and ds.preprocess.channels == 1  # its own size and grey, as for a folder
    # Decoded bit for bit: the first mosaic's PNG is the cached array.
    from PIL import Image

    first = ds.splits["train"]
    assert np.array_equal(first.images[0, 0], np.asarray(Image.open(first.paths[0])))


def test_a_changed_label_makes_a_new_cache_entry_and_fingerprint(mosaics: Path, cache_dir: Path) -> None:
    before = load_dataset(str(mosaics), cache_dir=str(cache_dir), verbose=False)
    lines = mosaics.read_text().splitlines()
    file, labels, split = lines[1].split(",")
    lines[1] = ",".join([file, labels + ";9" if "9" not in labels else "0", split])
    mosaics.write_text("\n".join(lines) + "\n")
    after = load_dataset(str(mosaics), cache_dir=str(cache_dir), verbose=False)
    assert after.fingerprint != before.fingerprint and after.cache_entry != before.cache_entry
    assert not np.array_equal(after.splits["train"].labels[0], before.splits["train"].labels[0])


def test_missing_and_non_image_files_are_skipped_with_their_reason(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "m"
    path = write_mosaics(root, {"train": 20}, split_column=False)
    (root / "notes.txt").write_text("not an image")
    with open(path, "a") as fh:
        fh.write("img/gone.png,1\nnotes.txt,2\n")
    ds = load_dataset(str(path), cache_dir=str(cache_dir), verbose=False)
    reasons = dict(ds.skipped)
    assert "listed on line 22 of labels.csv but not found" in reasons[str(root / "img" / "gone.png")]
    assert "not an image file" in reasons[str(root / "notes.txt")]
    assert len(ds.splits["train"]) == 20


@pytest.mark.parametrize(("text", "message"), [
    ("path,tags\na.png,x\n", "must name the columns file and labels"),
    ("file,labels,split\na.png,x,training\n", "labels.csv:2: split 'training' is not one of train, val, test"),
    ("file,labels\n../a.png,x\n", "labels.csv:2: ../a.png is outside the CSV's folder"),
    ("file,labels\na.png,x\nb.png,y\na.png,z\n", "labels.csv:4: a.png is listed again (first on line 2)"),
    ("file,labels\n,x\n", "labels.csv:2: the file column is empty"),
    ("file,labels,split\na.png,x,train\nb.png,y,val\n", "the val rows name class(es) ['y'] that no train row has"),
    ("file,labels\na.png,\n", "no training row has a label"),
])
def test_a_malformed_csv_is_refused_by_line_with_the_fix(tmp_path: Path, cache_dir: Path, text: str,
                                                        message: str) -> None:
    path = _csv(tmp_path / "d", text)
    write_mosaics(tmp_path / "src", {"train": 2}, split_column=False)
    for name in ("a.png", "b.png"):
        shutil.copy(tmp_path / "src" / "img" / "train_0000.png", tmp_path / "d" / name)
    with pytest.raises(DatasetError) as err:
        load_dataset(str(path), cache_dir=str(cache_dir), verbose=False)
    assert message in str(err.value)


def test_a_csv_cannot_train_single_label_and_a_built_in_cannot_train_multi_label(mosaics: Path) -> None:
    with pytest.raises(DatasetError, match="a labels CSV trains a multi-label model"):
        load_dataset(str(mosaics), task="multiclass", verbose=False)
    with pytest.raises(DatasetError, match="single-label built-in"):
        load_dataset("digits", task="multilabel", verbose=False)


def test_a_folder_with_copies_in_several_class_folders_is_one_image_per_copy_set(tmp_path: Path,
                                                                                 cache_dir: Path) -> None:
    src = write_mosaics(tmp_path / "src", {"train": 12}, split_column=False).parent / "img"
    pngs = sorted(src.glob("*.png"))
    root = tmp_path / "folder"
    for cls in ("cat", "dog", "hat"):
        (root / cls).mkdir(parents=True)
    for i, png in enumerate(pngs):  # image i sits in cat if i % 2 == 0, dog if i % 3 == 0, else hat
        homes = [c for c, keep in (("cat", i % 2 == 0), ("dog", i % 3 == 0)) if keep] or ["hat"]
        for cls in homes:
            shutil.copy(png, root / cls / f"copy-{i}-{cls}.png")  # names differ: the bytes make them one image
    ds = load_dataset(str(root), task="multilabel", cache_dir=str(cache_dir), verbose=False)
    train = ds.splits["train"]
    assert ds.task == "multilabel" and ds.classes == ("cat", "dog", "hat") and len(train) == 12
    got = {int(Path(p).name.split("-")[1]): tuple(ds.classes[k] for k in np.flatnonzero(row))
           for p, row in zip(train.paths or (), train.labels)}
    assert got == {i: tuple(c for c, keep in (("cat", i % 2 == 0), ("dog", i % 3 == 0)) if keep) or ("hat",)
                   for i in range(12)}
    assert any("sit in 2 or more class folders" in note for note in ds.notes)
    # Without --task the same folder is single-label, as always: one entry per file.
    assert len(load_dataset(str(root), cache_dir=str(cache_dir), verbose=False).splits["train"]) == 12 + 2


def test_the_validation_hold_out_is_seeded_and_keeps_every_class_in_train(tmp_path: Path, cache_dir: Path) -> None:
    path = write_mosaics(tmp_path / "m", {"train": 120}, split_column=False)
    ds = load_dataset(str(path), cache_dir=str(cache_dir), verbose=False)
    a, b = with_validation(ds, 0.2, seed=3), with_validation(ds, 0.2, seed=3)
    assert len(a.splits["val"]) == 24 and len(a.splits["train"]) == 96
    assert a.splits["val"].paths == b.splits["val"].paths
    assert set(a.splits["val"].paths or ()).isdisjoint(a.splits["train"].paths or ())
    assert (a.splits["train"].labels.sum(0) > 0).all()
    assert "random, seed 3" in a.notes[-1]


def test_mixing_multi_hot_rows_weights_both_label_sets() -> None:
    x = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    rows = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float32)
    _, target = mix(x, rows, 3, MixParams(0.75, None))
    assert torch.allclose(target, 0.75 * rows + 0.25 * rows.flip(0))
