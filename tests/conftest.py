"""Shared fixtures: real images (scikit-learn's digits) written as small image folders, and a private cache.

Every test runs with PIGEON_CACHE_DIR pointing at its own empty temporary folder, so nothing is ever written
to ~/.cache and no test sees another test's cache entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_CACHE_DIR", str(tmp_path_factory.mktemp("pigeon-cache")))
    for name in ("FASHION_MNIST", "MNIST", "CIFAR10", "CIFAR100"):  # a built-in's local copy and its mirror
        for var in (f"PIGEON_{name}", f"PIGEON_{name}_URL"):
            monkeypatch.delenv(var, raising=False)


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder to pass as `cache_dir=`; outside tmp_path, so it never lands inside a dataset."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as (uint8 images [N, 8, 8] scaled 0..255, int64 labels [N])."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8), bunch.target.astype(np.int64)


DigitsFolder = Callable[..., Path]


@pytest.fixture
def digits_folder(tmp_path: Path, digits_arrays: tuple[np.ndarray, np.ndarray]) -> DigitsFolder:
    """Factory writing an image-classification folder of real digit images; returns its root.

        make(root=None, *, splits=("train",), per_class=4, classes=("0", "1", "2"), size=16,
             ext=".png", mode="L") -> Path

    root:      where to write it (default tmp_path / "data"); may already exist.
    splits:    writes root/<split>/<class>/NNN<ext> for each split; None writes the flat layout
               root/<class>/NNN<ext> (a train split alone).
    per_class: images per class, an int or {split: int}.
    classes:   class folder names; class i holds images of digit i % 10, every image a different sample.
    size:      the 8x8 digits are upscaled (bilinear) to size x size.
    ext:       file extension; the format follows it (.png, .jpg, .bmp, .gif, .tif, .webp, ...).
    mode:      "L" (grayscale) or "RGB" (the digit in orange on blue: a truly colour image).
    """
    from PIL import Image

    images, labels = digits_arrays

    def make(root: Path | str | None = None, *, splits: Sequence[str] | None = ("train",),
             per_class: int | Mapping[str, int] = 4, classes: Sequence[str] = ("0", "1", "2"), size: int = 16,
             ext: str = ".png", mode: str = "L") -> Path:
        root = Path(root) if root is not None else tmp_path / "data"
        used = {d: 0 for d in range(10)}  # next unused sample of each digit
        for split in splits if splits is not None else (None,):
            n = per_class if isinstance(per_class, int) else per_class[split or "train"]
            for i, name in enumerate(classes):
                folder = root / split / name if split else root / name
                folder.mkdir(parents=True, exist_ok=True)
                digit = i % 10
                samples = np.flatnonzero(labels == digit)
                for k in range(n):
                    pixels = images[samples[used[digit] % len(samples)]]
                    used[digit] += 1
                    img = Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR)
                    if mode == "RGB":
                        g = np.asarray(img)
                        img = Image.fromarray(np.stack([g, g // 2, 255 - g], axis=-1), "RGB")
                    elif mode != "L":
                        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
                    img.save(folder / f"{k:03d}{ext}")
        return root

    return make


# One small real training run, shared by every module that needs a trained model (train, predict, api, cli).
SHARED_RUN = {"epochs": 3, "batch": 64, "amp": "off", "device": "cpu", "seed": 0, "verbose": False}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the default model (pigeon-p on a CPU) trained on digits with SHARED_RUN, once per session."""
    import pigeon

    base = tmp_path_factory.getbasetemp()
    run_dir = base / "shared-digits-run" / "digits"
    pigeon.train(data="digits", **SHARED_RUN, cache_dir=str(base / "shared-digits-cache"),
                 project=str(run_dir.parent), name=run_dir.name, exist_ok=True)
    return run_dir


@pytest.fixture(scope="session")
def clf(digits_run: Path):  # type: ignore[no-untyped-def]
    """digits_run's best checkpoint, loaded on the CPU."""
    import pigeon

    return pigeon.load(digits_run / "weights" / "best.safetensors", device="cpu")


@pytest.fixture(scope="session")
def digits_weights(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of digits_run's best checkpoint, alone in a folder of its own: digits_exports writes beside it.
    Nothing else may write there (tests/deploy/test_runtimes.py checks the folder holds only the exports)."""
    import shutil

    folder = tmp_path_factory.mktemp("digits-exports") / "weights"
    folder.mkdir()
    for name in ("best.safetensors", "best.meta.json"):
        shutil.copy2(digits_run / "weights" / name, folder / name)
    return folder / "best.safetensors"


@pytest.fixture(scope="session")
def digits_exports(digits_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{name: ExportResult} of digits_weights in every format of tests/digits_exports.py, exported once per
    session (each export costs seconds): for tests that read an export; a test that exports makes its own."""
    from digits_exports import CHECK_IMAGES, FORMATS

    import pigeon

    cache = str(tmp_path_factory.mktemp("digits-exports-cache"))  # session scope: PIGEON_CACHE_DIR is not isolated
    out = {"onnx-dynamic": str(digits_weights.with_name("dynamic.onnx"))}
    return {name: pigeon.export(digits_weights, check_images=CHECK_IMAGES, cache_dir=cache, out=out.get(name),
                                verbose=False, **options) for name, options in FORMATS.items()}


@pytest.fixture(scope="session")
def tiny_clf(tmp_path_factory: pytest.TempPathFactory, digits_arrays: tuple[np.ndarray, np.ndarray]) -> Any:
    """A pigeon-n trained for one epoch on 3 digit classes at 16x16 grayscale: for tests of predict's plumbing."""
    from PIL import Image

    import pigeon

    images, labels = digits_arrays
    root = tmp_path_factory.mktemp("tiny") / "digits"
    for digit in range(3):
        (root / str(digit)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == digit)[:6]):
            Image.fromarray(images[i], "L").resize((16, 16), Image.BILINEAR).save(root / str(digit) / f"{k}.png")
    base = tmp_path_factory.mktemp("tiny-run")
    run = pigeon.train(str(root), epochs=1, imgsz=16, plots=False, verbose=False, device="cpu", amp="off", seed=0,
                       project=str(base / "runs"), cache_dir=str(base / "cache"))
    return pigeon.load(run.best, device="cpu")


@pytest.fixture
def wide_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a two-class folder of non-square grayscale images; returns its root.

        make(root=None, *, per_class=4, size=(20, 40)) -> Path

    Class "left" has a bright block over the left half of each (height, width) image, "right" over the right
    half, on seeded noise: a mirror swaps the classes, so train these with fliplr=0.
    """
    from PIL import Image

    def make(root: Path | str | None = None, *, per_class: int = 4, size: tuple[int, int] = (20, 40)) -> Path:
        root = Path(root) if root is not None else tmp_path / "wide"
        rng = np.random.default_rng(0)
        h, w = size
        for label, name in enumerate(("left", "right")):
            (root / name).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 60, (h, w), dtype=np.uint8)
                pixels[:, slice(0, w // 2) if label == 0 else slice(w // 2, w)] += 150
                Image.fromarray(pixels, "L").save(root / name / f"{k}.png")
        return root

    return make


def _raster_tile(seed: int, shape: tuple[int, ...] = (4, 12, 12), nir: int = 30000) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 3000, shape).astype(np.uint16)
    a[3] += np.uint16(nir)
    return a


@pytest.fixture
def raster_tile() -> Callable[..., np.ndarray]:
    """raster_tile(seed, shape=(4, 12, 12), nir=30000): a 16-bit RGB+NIR tile [C, H, W], dim colour bands and a
    near-infrared band around `nir`, as raster_folder writes them."""
    return _raster_tile


@pytest.fixture
def raster_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing two classes of 16-bit 4-band tiles told apart by the near-infrared band alone: .npy
    (bands first) and TIFF (bands last) files mixed; file k of class i is raster_tile(10 * i + k, nir=40000 or 2000).

        make(root=None, *, per_class=3) -> Path
    """
    tifffile = pytest.importorskip("tifffile", reason="the tiff extra is not installed: pip install 'pigeon[tiff]'")

    def make(root: Path | str | None = None, *, per_class: int = 3) -> Path:
        root = Path(root) if root is not None else tmp_path / "tiles"
        for label, (name, nir) in enumerate((("vegetation", 40000), ("water", 2000))):
            (root / name).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                tile = _raster_tile(10 * label + k, nir=nir)
                if k % 2:
                    tifffile.imwrite(root / name / f"{k}.tif", tile.transpose(1, 2, 0), photometric="minisblack",
                                     planarconfig="contig")
                else:
                    np.save(root / name / f"{k}.npy", tile)
        return root

    return make
