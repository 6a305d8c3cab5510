"""pigeon.val (and load) on a model trained on real digits: same split and weights give the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pigeon
from pigeon.engine.predict import Classifier
from pigeon.errors import DatasetError


def _folder(root: Path, digits: dict[str, int], per_class: int = 5) -> Path:
    """root/<name>/<i>.png holding real 8x8 images of the given digit (the model's native size)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    for name, digit in digits.items():
        (root / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(bunch.target == digit)[-per_class:]):
            Image.fromarray(images[index], "L").save(root / name / f"{i}.png")
    return root


def test_val_reproduces_the_training_test_report(digits_run: Path, tmp_path: Path) -> None:
    summary = json.loads((digits_run / "summary.json").read_text())
    report = pigeon.val(str(digits_run / "weights" / "best.safetensors"), "digits", device="cpu",
                        cache_dir=str(tmp_path / "cache"), project=str(tmp_path / "val"), verbose=False)
    assert report["split"] == "test" and report["data"] == "digits"  # digits has no val split of its own
    assert report["n"] == 450
    assert report["top1"] == summary["test"]["top1"]
    assert report["confusion"] == summary["test_report"]["confusion"]
    assert report["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-4)
    run_dir = Path(report["run_dir"])
    assert run_dir == tmp_path / "val" / "pigeon-p-digits"
    written = json.loads((run_dir / "report.json").read_text())
    assert written["top1"] == report["top1"] and written["split"] == "test"
    with Image.open(run_dir / "confusion_matrix.png") as img:
        assert img.format == "PNG"


def test_val_numbers_new_report_folders_and_can_skip_plots(clf: Classifier, tmp_path: Path) -> None:
    first = pigeon.val(clf, "digits", project=str(tmp_path), name="r", plots=False, verbose=False)
    second = pigeon.val(clf, "digits", project=str(tmp_path), name="r", plots=False, verbose=False)
    assert (Path(first["run_dir"]).name, Path(second["run_dir"]).name) == ("r", "r-2")
    assert sorted(p.name for p in Path(first["run_dir"]).iterdir()) == ["report.json"]
    assert first["top1"] == second["top1"]


def test_val_without_project_writes_nothing(clf: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    report = pigeon.val(clf, "digits", split="test", project=None)
    assert "run_dir" not in report
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert f"top-1 {100 * report['top1']:.2f}%" in out and "samples 450" in out


def test_val_maps_folder_classes_to_the_model_by_name(clf: Classifier, tmp_path: Path) -> None:
    # Folder order is ("3", "7"), indices 0 and 1; the model knows them as 3 and 7.
    root = _folder(tmp_path / "data", {"7": 7, "3": 3})
    report = pigeon.val(clf, str(root), project=None, verbose=False, cache_dir=str(tmp_path / "cache"))
    assert report["split"] == "train" and report["n"] == 10
    files = sorted(root.rglob("*.png"))
    preds = clf.predict(files)
    expected = np.mean([p.label == f.parent.name for p, f in zip(preds, files)])
    assert report["top1"] == expected
    confusion = np.asarray(report["confusion"])
    assert confusion.shape == (10, 10)
    assert confusion[3].sum() == 5 and confusion[7].sum() == 5 and confusion.sum() == 10


def test_val_refuses_classes_the_model_does_not_know(clf: Classifier, tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", {"cat": 1, "3": 3})
    with pytest.raises(DatasetError, match=r"classes \['cat'\] are not among the model's classes"):
        pigeon.val(clf, str(root), project=str(tmp_path / "val"), verbose=False, cache_dir=str(tmp_path / "c"))
    assert not (tmp_path / "val").exists()


def test_val_refuses_a_missing_split(clf: Classifier, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="digits has no 'val' split; it has train, test"):
        pigeon.val(clf, "digits", split="val", project=None, verbose=False)


def test_val_on_missing_data(clf: Classifier, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="did you mean 'digits'"):
        pigeon.val(clf, "digitz", project=None, verbose=False)


def test_load_gives_a_ready_classifier(digits_run: Path) -> None:
    clf = pigeon.load(str(digits_run / "weights" / "best.safetensors"), device="cpu")
    assert clf.classes == tuple(str(d) for d in range(10))
    assert (clf.preprocess.imgsz, clf.preprocess.channels) == (8, 1)
    assert not clf.model.training
    assert clf.meta["model"] == "pigeon-p"
