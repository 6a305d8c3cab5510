"""Non-square input sizes (--imgsz HxW) through training, the cache, the checkpoint, val and predict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import pigeon
from pigeon.cli import main
from pigeon.data import load_dataset
from pigeon.engine.checkpoint import read

FAST = {"model": "pigeon-p", "epochs": 1, "batch": 4, "fliplr": 0.0, "plots": False, "device": "cpu",
        "amp": "off", "val_fraction": 0.0}
WideFolder = Callable[..., Path]


def test_a_run_at_hxw_keeps_height_and_width_everywhere(tmp_path: Path, cache_dir: Path, wide_folder: WideFolder,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    data = wide_folder()
    run = pigeon.train(str(data), imgsz="16x32", project=str(tmp_path / "runs"), name="w", cache_dir=str(cache_dir),
                       **FAST)
    out = capsys.readouterr().out
    assert "16x32x1" in out  # the training line says height x width x channels
    assert run.config.imgsz == (16, 32)
    assert json.loads((run.run_dir / "config.json").read_text())["imgsz"] == [16, 32]
    _, meta = read(run.best)
    assert meta["preprocess"]["imgsz"] == [16, 32]
    # The cache holds [N, C, H, W] at that size, and is the entry val finds again
    ds = load_dataset(str(data), imgsz=(16, 32), channels=1, cache_dir=str(cache_dir), verbose=False)
    assert ds.splits["train"].images.shape == (8, 1, 16, 32)
    clf = pigeon.load(run.best, device="cpu")
    assert clf.preprocess.hw == (16, 32)
    report = pigeon.val(clf, str(data), split="train", cache_dir=str(cache_dir), project=None, verbose=False)
    assert sum(map(sum, report["confusion"])) == 8
    # predict resizes any file to the box: a square file and a tall one both give probabilities
    from PIL import Image

    Image.new("L", (25, 25), 200).save(tmp_path / "square.png")
    Image.new("L", (10, 50), 200).save(tmp_path / "tall.png")
    preds = pigeon.predict(clf, [str(tmp_path / "square.png"), str(tmp_path / "tall.png")])
    assert [p.ok for p in preds] == [True, True]
    assert all(abs(float(p.probs.sum()) - 1) < 1e-5 for p in preds)


def test_a_square_run_still_stores_a_plain_int(tmp_path: Path, cache_dir: Path, wide_folder: WideFolder) -> None:
    data = wide_folder(size=(16, 16))
    run = pigeon.train(str(data), imgsz="16", project=str(tmp_path / "runs"), name="s", cache_dir=str(cache_dir),
                       verbose=False, **FAST)
    assert run.config.imgsz == 16
    assert read(run.best)[1]["preprocess"]["imgsz"] == 16
    assert json.loads((run.run_dir / "config.json").read_text())["imgsz"] == 16


@pytest.mark.parametrize(("spec", "message"), [
    ("0x5", "imgsz='0x5': the height 0 is out of range; each side must be >= 8"),
    ("abc", "imgsz='abc' is not an input size; give one number for a square (--imgsz 64) or HEIGHTxWIDTH"),
    ("96x", "imgsz='96x' is not an input size"),
    ("16x2000", "the width 2000 is out of range"),
])
def test_bad_imgsz_specs_are_refused_naming_the_option_and_the_fix(
        spec: str, message: str, tmp_path: Path, wide_folder: WideFolder, capsys: pytest.CaptureFixture[str]) -> None:
    data = wide_folder(per_class=2)
    assert main(["train", "--data", str(data), "--imgsz", spec, "--project", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: ") and message in err
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_the_cli_takes_hxw_and_resume_reads_it_back_from_config_json(tmp_path: Path, cache_dir: Path,
                                                                     wide_folder: WideFolder) -> None:
    data = wide_folder(per_class=2)
    common = ["--model", "pigeon-p", "--epochs", "1", "--batch", "4", "--fliplr", "0", "--no-plots", "--device",
              "cpu", "--amp", "off", "--val-fraction", "0", "--cache-dir", str(cache_dir), "--no-verbose"]
    assert main(["train", "--data", str(data), "--imgsz", "16x24", "--project", str(tmp_path / "runs"), "--name",
                 "c", *common]) == 0
    run_dir = tmp_path / "runs" / "c"
    assert json.loads((run_dir / "config.json").read_text())["imgsz"] == [16, 24]
    resumed = pigeon.train(resume=str(run_dir), verbose=False)
    assert resumed.config.imgsz == (16, 24)
