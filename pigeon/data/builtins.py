"""Built-in datasets, all offline-capable: Fashion-MNIST (original IDX files) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pigeon.data import cache
from pigeon.data.dataset import Dataset, Split, channel_stats, stratified_split
from pigeon.data.preprocess import Preprocess, image_to_array
from pigeon.errors import DatasetError
from pigeon.io import atomic_write_bytes
from pigeon.offline import offline

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* IDX files, so a re-gzipped copy (as Debian ships) verifies too.
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian/Ubuntu: apt-get install dataset-fashion-mnist


def read_idx(raw: bytes) -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic, dims, then big-endian data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"IDX header says {tuple(dims.tolist())} but holds {data.size} bytes")
    return data.reshape(tuple(dims))


def _candidate_dirs(cache_dir: str | None) -> list[Path]:
    dirs = [Path(os.environ["PIGEON_FASHION_MNIST"])] if os.environ.get("PIGEON_FASHION_MNIST") else []
    return dirs + [Path(d) for d in SYSTEM_DIRS] + [cache.cache_root(cache_dir) / "datasets" / "fashion-mnist"]


def _verified(path: Path) -> bytes | None:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error):
        return None
    return raw if hashlib.sha256(raw).hexdigest() == FASHION_FILES[path.name] else None


def download_fashion_mnist(dest: Path, base_url: str | None = None, timeout: float = 30.0) -> None:
    """Fetch the four original files into `dest`, checking each one's checksum before keeping it.

    From $PIGEON_FASHION_MNIST_URL when set (a mirror), else the dataset's original address; never with
    PIGEON_OFFLINE=1."""
    base_url = base_url or os.environ.get("PIGEON_FASHION_MNIST_URL") or FASHION_URL
    for name, sha in FASHION_FILES.items():
        if (dest / name).exists() and _verified(dest / name) is not None:
            continue
        url = base_url.rstrip("/") + "/" + name
        if offline():
            raise DatasetError(
                f"--data fashion-mnist: the dataset is not on this machine and PIGEON_OFFLINE=1 forbids downloading "
                f"it from {base_url}. Fix: on Debian/Ubuntu run `apt-get install dataset-fashion-mnist`, or copy the "
                f"four *-ubyte.gz files ({', '.join(FASHION_FILES)}) into a folder and set PIGEON_FASHION_MNIST to "
                f"it, or place them in {dest}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                blob = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise DatasetError(
                f"Fashion-MNIST is not on this machine and {url} could not be fetched ({err}). Fix: on "
                "Debian/Ubuntu run `apt-get install dataset-fashion-mnist`, or put the four *-ubyte.gz files "
                f"in a folder and set PIGEON_FASHION_MNIST to it, or place them in {dest}") from None
        try:
            ok = hashlib.sha256(gzip.decompress(blob)).hexdigest() == sha
        except (OSError, EOFError, zlib.error):
            ok = False
        if not ok:
            raise DatasetError(f"{url} does not match the published Fashion-MNIST file (checksum mismatch); "
                               "nothing was saved. Try again later or install dataset-fashion-mnist")
        atomic_write_bytes(dest / name, blob)


def _fashion_arrays(cache_dir: str | None, verbose: bool) -> dict[str, np.ndarray]:
    for folder in _candidate_dirs(cache_dir):
        if all((folder / name).exists() for name in FASHION_FILES):
            raws = {name: _verified(folder / name) for name in FASHION_FILES}
            bad = [name for name, raw in raws.items() if raw is None]
            if bad:
                raise DatasetError(f"{folder}: {', '.join(bad)} corrupt (checksum mismatch); delete and re-fetch")
            return {name.split(".")[0]: read_idx(raw) for name, raw in raws.items() if raw is not None}
    dest = _candidate_dirs(cache_dir)[-1]
    if verbose:
        print(f"Fashion-MNIST not found locally; downloading to {dest}")
    download_fashion_mnist(dest)
    return _fashion_arrays(cache_dir, verbose=False)


def fashion_mnist(cache_dir: str | None, verbose: bool) -> tuple[dict[str, Split], tuple[str, ...], float]:
    a = _fashion_arrays(cache_dir, verbose)
    splits = {
        "train": Split(a["train-images-idx3-ubyte"][:, None], a["train-labels-idx1-ubyte"].astype(np.int64)),
        "test": Split(a["t10k-images-idx3-ubyte"][:, None], a["t10k-labels-idx1-ubyte"].astype(np.int64)),
    }
    return splits, FASHION_CLASSES, 0.5


def digits(cache_dir: str | None, verbose: bool) -> tuple[dict[str, Split], tuple[str, ...], float]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits dataset ships with scikit-learn: pip install 'pigeon[digits]'") from None
    bunch = load_digits()
    # Pixel values are 0..16; stretch them to 0..255 so digits look like any other uint8 image.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, 0.25, seed=0)  # fixed: the same test split for everyone
    splits = {"train": Split(images[train_idx], labels[train_idx]),
              "test": Split(images[test_idx], labels[test_idx])}
    return splits, tuple(str(d) for d in range(10)), 0.0  # a mirrored digit is a different symbol


BUILTINS: dict[str, Callable[[str | None, bool], tuple[dict[str, Split], tuple[str, ...], float]]] = {
    "fashion-mnist": fashion_mnist,
    "digits": digits,
}


def _resized(split: Split, spec: Preprocess, key: str, cache_dir: str | None) -> Split:
    from PIL import Image

    def build(tmp: Path) -> tuple[list[str], dict]:
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(split), spec.channels, spec.imgsz, spec.imgsz))
        for i, img in enumerate(split.images):
            out[i] = image_to_array(Image.fromarray(np.asarray(img[0])), spec.imgsz, spec.channels, spec.resize)
        out.flush()
        return ["images"], {}

    arrays, _, _ = cache.load_or_build(cache.cache_root(cache_dir), key, build)
    return Split(arrays["images"], split.labels)


def load_builtin(name: str, *, imgsz: int | None, channels: int | None, resize: str,
                 cache_dir: str | None, verbose: bool = True) -> Dataset:
    splits, classes, fliplr = BUILTINS[name](cache_dir, verbose)
    native = splits["train"].images.shape[-1]
    imgsz, channels = imgsz or native, channels or 1
    spec = Preprocess(imgsz=imgsz, channels=channels, resize=resize, mean=(0.5,) * channels,
                      std=(0.5,) * channels)  # placeholders until the stats below; one per channel
    key = cache.fingerprint([name, native, spec.to_dict()])
    if (imgsz, channels) != (native, 1):
        splits = {s: _resized(sp, spec, cache.fingerprint([key, s]), cache_dir) for s, sp in splits.items()}
    mean, std = channel_stats(splits["train"].images)
    spec = Preprocess(imgsz=imgsz, channels=channels, resize=resize, mean=mean, std=std)
    return Dataset(name=name, classes=classes, splits=splits, preprocess=spec, fingerprint=key, fliplr=fliplr,
                   cache_entry=key)
