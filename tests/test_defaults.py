"""Defaults that fit the user's data, checked the way a user meets them: `pigeon train --data DIR` on real PNGs.

The input size follows the images (small ones are not upscaled), the run says what it chose and why, and a
figure chosen and reported on val is called optimistic when there is no test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pigeon.cli import main
from pigeon.data import folder_imgsz


def _train(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, dict]:
    code = main(["train", "--data", str(data), "--epochs", "1", "--device", "cpu", "--no-plots",
                 "--project", str(tmp_path / "runs"), "--name", "r", *extra])
    assert code == 0
    run = tmp_path / "runs" / "r"
    return capsys.readouterr().out, {**json.loads((run / "config.json").read_text()),
                                     "summary": json.loads((run / "summary.json").read_text())}


def test_an_8px_digits_folder_trains_at_8_and_says_why(digits_folder, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = digits_folder(splits=("train", "val"), classes=tuple("0123456789"), per_class={"train": 6, "val": 3},
                         size=8)
    out, run = _train(data, tmp_path, capsys)
    assert run["imgsz"] == 8
    assert "note: imgsz 8: the images' own size (median shorter side of 60 sampled)" in out
    assert "8x8x1" in out
    assert "note: flips are on by default (--fliplr 0.5), but a mirror moves" in out and "try --fliplr 0" in out
    assert "try --fliplr 0" in run["summary"]["hint"]
    caveat = run["summary"]["caveat"]
    assert caveat.startswith("no test split: the val top-1") and "optimistic" in caveat and "test/" in caveat
    assert f"note: {caveat}" in out


def test_with_a_test_split_nothing_is_called_optimistic(digits_folder, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = digits_folder(splits=("train", "val", "test"), per_class=3, size=12)
    out, run = _train(data, tmp_path, capsys, "--fliplr", "0.5")
    assert run["imgsz"] == 12 and "caveat" not in run["summary"] and "optimistic" not in out
    assert "try --fliplr" not in out  # the user chose flips: no advice


def test_large_photos_are_capped_and_an_explicit_size_wins(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / cls / f"{i}.png")
    assert folder_imgsz(tmp_path / "data") == (64, "imgsz 64: the images are larger (median shorter side 90 px) and "
                                                   "64 px keeps training fast; --imgsz to train bigger")
    out, run = _train(tmp_path / "data", tmp_path, capsys, "--imgsz", "32")
    assert run["imgsz"] == 32 and "note: imgsz" not in out


def test_the_size_is_the_side_the_resize_keeps(tmp_path: Path) -> None:
    for cls, (w, h) in (("a", (20, 40)), ("b", (20, 40)), ("c", (3, 5))):
        (tmp_path / cls).mkdir()
        for i in range(3 if cls != "c" else 1):
            Image.new("L", (w, h)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")  # unreadable: left for the decoder to report
    assert folder_imgsz(tmp_path, "crop")[0] == 20
    assert folder_imgsz(tmp_path, "pad")[0] == 40
    (tmp_path / "c" / "0.png").unlink()
    Image.new("L", (3, 5)).save(tmp_path / "c" / "0.png")
    for cls in ("a", "b"):
        for p in (tmp_path / cls).glob("*.png"):
            p.unlink()
            Image.new("L", (4, 4)).save(p)
    assert folder_imgsz(tmp_path)[0] == 8  # pigeon's models start at 8 px


def test_the_mirror_ratio_tells_glyphs_from_symmetric_things(digits_arrays) -> None:  # type: ignore[no-untyped-def]
    from pigeon.data.augment import MIRROR_HINT_RATIO, mirror_ratio

    images, labels = digits_arrays
    assert mirror_ratio(images[:, None], labels) > MIRROR_HINT_RATIO  # a mirrored 3 is no 3
    bars = np.zeros((40, 1, 8, 8), np.uint8)  # four classes of horizontal bars: a mirror changes nothing
    for i in range(40):
        bars[i, 0, i % 4 * 2] = 200 + i
    assert mirror_ratio(bars, np.arange(40) % 4) == 0.0
