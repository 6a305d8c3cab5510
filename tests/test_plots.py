"""pigeon.plots writes real, non-blank PNGs atomically and keeps matplotlib out of import time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pigeon.plots import plot_confusion, plot_curves, plot_prediction_grid

REPO = Path(__file__).resolve().parents[1]
GREEN, RED = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E)


def _check_png(path: Path, min_side: int = 200) -> np.ndarray:
    """Open the file as a PNG, check it is large and not blank, and return its RGB pixels."""
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= min_side
        rgb = img.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 24)
    assert colours is not None and len(colours) > 16, "image looks blank"
    return np.asarray(rgb)


def _only(directory: Path, *names: str) -> None:
    """No temp files left behind: the directory holds exactly the expected outputs."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def _has_colour(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> bool:
    return bool((np.abs(pixels.astype(int) - colour).max(axis=2) <= tol).any())


def test_import_does_not_load_matplotlib() -> None:
    code = "import pigeon.plots, sys; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_plot_curves(tmp_path: Path) -> None:
    rows = [
        {"epoch": 1, "train_loss": 2.1, "val_loss": 1.9, "val_top1": 0.31, "val_top5": 0.70},
        {"epoch": 2, "train_loss": 1.5, "val_loss": None, "val_top1": None, "val_top5": ""},
        # rows read back from a CSV log hold strings
        {"epoch": "3", "train_loss": "1.1", "val_loss": "1.2", "val_top1": "0.55", "val_top5": "0.91"},
    ]
    out = plot_curves(rows, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    _check_png(out)
    _only(tmp_path, "curves.png")
    # The temp file must not leak a private mode onto the result: same mode as any new file here.
    (tmp_path / "plain.txt").write_text("x")
    assert out.stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_plot_curves_without_top5_and_into_new_dir(tmp_path: Path) -> None:
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_top1": 1 - 1 / e} for e in range(1, 6)
    ]
    out = plot_curves(rows, tmp_path / "nested" / "curves.png")
    _check_png(out)
    _only(out.parent, "curves.png")
    with pytest.raises(ValueError, match="at least one epoch"):
        plot_curves([], tmp_path / "empty.png")


# Counts and recall differ in the colour scale and the cell text, which 3 classes cover; one large matrix checks
# the canvas and the tick thinning (3 s each at 120 classes).
@pytest.mark.parametrize(("k", "normalize"), [(3, True), (3, False), (120, True)])
def test_plot_confusion(tmp_path: Path, k: int, normalize: bool) -> None:
    rng = np.random.default_rng(k)
    confusion = rng.integers(0, 20, size=(k, k)) + np.diag(rng.integers(20, 60, size=k))
    confusion[1] = 0  # a class absent from the targets must not produce NaN or warnings
    names = [f"class_{i}" for i in range(k)]
    out = plot_confusion(confusion, names, tmp_path / "confusion.png", normalize=normalize)
    pixels = _check_png(out, min_side=400)
    if k == 120:
        assert min(pixels.shape[:2]) >= 1500  # the canvas grows with the class count
    _only(tmp_path, "confusion.png")


def test_plot_confusion_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[2, 2\] to match 2 class names"):
        plot_confusion(np.eye(3, dtype=np.int64), ["a", "b"], tmp_path / "c.png")
    _only(tmp_path)


@pytest.mark.parametrize("channels", (1, 3))
@pytest.mark.parametrize("n", (1, 7, 40))
def test_plot_prediction_grid(tmp_path: Path, channels: int, n: int) -> None:
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, channels, 28, 32), dtype=np.uint8)
    true = [f"t{i % 3}" for i in range(n)]
    pred = [f"t{(i * 2) % 3}" for i in range(n)]
    conf = rng.uniform(0, 1, size=n).tolist()
    out = plot_prediction_grid(images, true, pred, conf, tmp_path / "grid.png", max_images=25)
    _check_png(out, min_side=150)
    _only(tmp_path, "grid.png")


@pytest.mark.parametrize("channels", (1, 3))
def test_prediction_grid_title_colours(tmp_path: Path, channels: int) -> None:
    # Grey images, so any green or red pixel comes from a title.
    images = np.full((4, channels, 16, 16), 128, dtype=np.uint8)
    labels = ["cat", "dog", "cat", "dog"]
    right = _check_png(plot_prediction_grid(images, labels, labels, [0.9] * 4, tmp_path / "r.png"), 100)
    wrong = _check_png(plot_prediction_grid(images, labels, labels[::-1], [0.9] * 4, tmp_path / "w.png"), 100)
    assert _has_colour(right, GREEN) and not _has_colour(right, RED)
    assert _has_colour(wrong, RED) and not _has_colour(wrong, GREEN)


def test_prediction_grid_rejects_bad_input(tmp_path: Path) -> None:
    good = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        plot_prediction_grid(good.astype(np.float32), ["a"] * 2, ["a"] * 2, [1.0] * 2, tmp_path / "g.png")
    with pytest.raises(ValueError, match="C in"):
        plot_prediction_grid(
            np.zeros((2, 2, 8, 8), np.uint8), ["a"] * 2, ["a"] * 2, [1.0] * 2, tmp_path / "g.png"
        )
    with pytest.raises(ValueError, match="one true label"):
        plot_prediction_grid(good, ["a"], ["a"] * 2, [1.0] * 2, tmp_path / "g.png")
    with pytest.raises(ValueError, match="at least one image"):
        plot_prediction_grid(good[:0], [], [], [], tmp_path / "g.png")
    _only(tmp_path)


def test_failed_render_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    def broken_savefig(self: Figure, *args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    (tmp_path / "curves.png").write_bytes(b"previous")
    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "curves.png")
    _only(tmp_path, "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == b"previous"  # the old file is untouched
