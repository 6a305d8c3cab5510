"""Classifier.predict on every accepted input kind, with a model trained on real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pigeon
from pigeon.data import load_dataset
from pigeon.engine.evaluate import evaluate
from pigeon.engine.predict import Classifier, Prediction
from pigeon.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    split = load_dataset("digits", cache_dir=str(tmp_path_factory.mktemp("cache")), verbose=False).splits["test"]
    return np.asarray(split.images), np.asarray(split.labels)


@pytest.fixture
def pngs(tmp_path: Path, test_split: tuple[np.ndarray, np.ndarray]) -> list[Path]:
    """Six test digits as PNG files, two of them in a subfolder; returned in sorted path order."""
    images = test_split[0]
    paths = [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png", tmp_path / "imgs" / "c.png",
             tmp_path / "imgs" / "d.png", tmp_path / "imgs" / "sub" / "e.png", tmp_path / "imgs" / "sub" / "f.png"]
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0], "L").save(path)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    return paths


def _check(pred: Prediction, k: int = 5) -> None:
    """The fields of one good prediction agree with each other."""
    assert pred.ok and pred.error is None and pred.probs is not None
    assert pred.probs.shape == (10,) and pred.probs.dtype == np.float32
    assert float(pred.probs.sum()) == pytest.approx(1.0, abs=1e-5)
    assert len(pred.top5) == k and len(set(pred.top5)) == k
    ranked = pred.probs[pred.top5]
    assert all(a >= b for a, b in zip(ranked, ranked[1:]))
    assert pred.top1 == pred.top5[0] == int(np.argmax(pred.probs))
    assert pred.top1_conf == float(pred.probs.max())
    assert pred.label == pred.classes[pred.top1] == str(pred.top1)
    d = pred.to_dict()
    assert d["label"] == pred.label and d["confidence"] == pytest.approx(pred.top1_conf, abs=1e-6)
    assert [t["index"] for t in d["top_k"]] == pred.top5
    assert repr(pred) == f"Prediction(source={pred.source!r}, label={pred.label!r}, conf={pred.top1_conf:.4f})"


def _same(a: Prediction, b: Prediction) -> None:
    """Same pixels, same answer (up to float rounding, which may differ between CPU kernels)."""
    assert a.top1 == b.top1
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-5, atol=1e-7)


def test_file_path_gives_one_prediction(clf: Classifier, pngs: list[Path]) -> None:
    for source in (pngs[0], str(pngs[0])):
        pred = clf.predict(source)
        assert isinstance(pred, Prediction)
        assert pred.source == str(pngs[0])
        _check(pred)


def test_every_input_kind_gives_the_same_answer(clf: Classifier, pngs: list[Path],
                                                test_split: tuple[np.ndarray, np.ndarray]) -> None:
    pixels = test_split[0][0, 0]  # the uint8 8x8 digit saved as a.png
    reference = clf.predict(pngs[0])
    sources = {
        "<PIL image>": Image.fromarray(pixels, "L"),
        "<array>": pixels,  # numpy HW uint8
        "<bytes>": pngs[0].read_bytes(),
    }
    for name, source in sources.items():
        pred = clf.predict(source)
        assert isinstance(pred, Prediction) and pred.source == name
        _same(pred, reference)
    tensor = torch.from_numpy(pixels).float().div(255)[None]  # float CHW in 0..1
    pred = clf.predict(tensor)
    assert isinstance(pred, Prediction) and pred.source == "<array>"
    _same(pred, reference)


def test_folder_glob_and_lists_give_lists_in_order(clf: Classifier, pngs: list[Path]) -> None:
    folder = pngs[0].parent
    by_folder = clf.predict(folder)
    assert isinstance(by_folder, list)
    assert [p.source for p in by_folder] == [str(p) for p in pngs]  # recursive, sorted, images only
    singles = [clf.predict(p) for p in pngs]
    for many, one in zip(by_folder, singles):
        _check(many)
        _same(many, one)

    by_glob = clf.predict(str(folder / "*.png"))
    assert [p.source for p in by_glob] == [str(p) for p in pngs[:4]]
    recursive = clf.predict(str(folder / "**" / "[ef].png"))
    assert [p.source for p in recursive] == [str(p) for p in pngs[4:]]

    single_in_list = clf.predict([pngs[2]])
    assert isinstance(single_in_list, list) and len(single_in_list) == 1

    mixed = clf.predict([pngs[5], str(folder / "sub"), np.zeros((8, 8), np.uint8), str(folder / "[ab].png")])
    assert [p.source for p in mixed] == [str(pngs[5]), str(pngs[4]), str(pngs[5]), "<array>",
                                         str(pngs[0]), str(pngs[1])]
    assert mixed[0].top1 == mixed[2].top1 == singles[5].top1


def test_batch_array_gives_one_prediction_per_image(clf: Classifier,
                                                    test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images = test_split[0][:5]  # uint8 [5, 1, 8, 8]
    preds = clf.predict(images, batch=2)  # several chunks
    assert isinstance(preds, list)
    assert [p.source for p in preds] == [f"<array[{i}]>" for i in range(5)]
    for i, pred in enumerate(preds):
        _check(pred)
        assert pred.top1 == clf.predict(images[i, 0]).top1
    nhwc = clf.predict(torch.from_numpy(images.transpose(0, 2, 3, 1).copy()))
    assert [p.top1 for p in nhwc] == [p.top1 for p in preds]


def test_predictions_agree_with_evaluate(clf: Classifier, test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = test_split
    report, logits = evaluate(clf.model, images, labels, list(clf.classes), clf.preprocess, clf.device,
                              amp=clf.amp, channels_last=clf.channels_last)
    preds = clf.predict(images, batch=512)
    assert len(preds) == len(labels) == 450
    assert [p.top1 for p in preds] == logits.argmax(1).tolist()
    # predict's probabilities are the calibrated ones: softmax at the temperature fitted on val in training
    assert clf.temperature != 1.0
    np.testing.assert_allclose(np.stack([p.probs for p in preds]), (logits / clf.temperature).softmax(1).numpy(),
                               rtol=1e-5, atol=1e-7)
    assert np.mean([p.top1 == y for p, y in zip(preds, labels)]) == report["top1"]
    assert report["top1"] >= 0.9


def test_bad_files_become_error_entries(clf: Classifier, pngs: list[Path]) -> None:
    folder = pngs[0].parent
    (folder / "bb_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (folder / "bc_empty.png").write_bytes(b"")
    preds = clf.predict(folder)
    names = [Path(p.source).name for p in preds]
    assert names == ["a.png", "b.png", "bb_corrupt.png", "bc_empty.png", "c.png", "d.png", "e.png", "f.png"]
    bad = {Path(p.source).name: p for p in preds if not p.ok}
    assert sorted(bad) == ["bb_corrupt.png", "bc_empty.png"]
    for p in bad.values():
        assert p.probs is None and p.top5 == [] and p.top1 is None and p.top1_conf is None and p.label is None
        assert "UnidentifiedImageError" in str(p.error)
        assert p.to_dict() == {"source": p.source, "error": p.error}
        assert repr(p) == f"Prediction(source={p.source!r}, error={p.error!r})"
    good = [p for p in preds if p.ok]
    assert [p.top1 for p in good] == [clf.predict(p).top1 for p in pngs]


def test_a_bad_array_is_an_error_entry(clf: Classifier) -> None:
    preds = clf.predict([np.zeros((8, 8), np.uint8), np.full((8, 8), np.nan, np.float32), np.zeros((2, 2, 2))])
    assert [p.ok for p in preds] == [True, False, False]
    assert "NaN" in str(preds[1].error) and "not an image" in str(preds[2].error)


def test_top_k_is_clipped_to_the_classes(clf: Classifier, pngs: list[Path]) -> None:
    _check(clf.predict(pngs[0], top_k=50), k=10)
    _check(clf.predict(pngs[0], top_k=3), k=3)
    _check(clf.predict(pngs[0], top_k=1), k=1)
    with pytest.raises(ConfigError, match="top_k=0 is out of range"):
        pigeon.predict(clf, pngs[0], top_k=0)


def test_missing_sources_raise(clf: Classifier, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.png: no such file or folder"):
        clf.predict(tmp_path / "nope.png")
    with pytest.raises(DatasetError, match="nope.png: no such file or folder"):
        clf.predict([np.zeros((8, 8), np.uint8), str(tmp_path / "nope.png")])
    with pytest.raises(DatasetError, match=r"\*.jpg: the pattern matches no files"):
        clf.predict(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="empty: the folder holds no images"):
        clf.predict(tmp_path / "empty")
    with pytest.raises(DatasetError, match="cannot predict on a int"):
        clf.predict(42)


def test_api_predict_loads_the_checkpoint(digits_run: Path, pngs: list[Path], clf: Classifier) -> None:
    pred = pigeon.predict(str(digits_run / "weights" / "best.safetensors"), pngs[0], top_k=2, device="cpu")
    assert isinstance(pred, Prediction)
    _check(pred, k=2)
    _same(pred, clf.predict(pngs[0]))
    assert repr(clf) == "Classifier(model='pigeon-p', classes=10, imgsz=8, channels=1, device=cpu)"
