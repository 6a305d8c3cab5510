"""Built-in datasets: Fashion-MNIST, MNIST, CIFAR-10 and CIFAR-100 (their original files, found on this machine
or downloaded once and verified) and scikit-learn's digits."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pigeon.config import Size
from pigeon.data import cache
from pigeon.data.dataset import Dataset, Split, channel_stats, stratified_split
from pigeon.data.downloads import Copy, Source, download, find, local_copy
from pigeon.data.preprocess import Preprocess, image_to_array
from pigeon.errors import DatasetError
from pigeon.offline import offline

Loaded = tuple[dict[str, Split], tuple[str, ...], float]  # splits, class names, default flip probability

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
CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-bin", "cifar-100-binary"  # the archives' top folders
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))

# The binary versions of CIFAR: the python versions hold pickles, and nothing pigeon loads may run code.
SOURCES = {
    "fashion-mnist": Source(
        "fashion-mnist", "Fashion-MNIST", FASHION_FILES, "gunzip-sha256", (FASHION_URL,),
        "PIGEON_FASHION_MNIST", "PIGEON_FASHION_MNIST_URL", SYSTEM_DIRS, "dataset-fashion-mnist",
        download_bytes=30_878_645),
    "mnist": Source(
        # MD5s of the .gz files as torchvision's MNIST lists them; the original site often refuses, so
        # torchvision's own copy on S3 follows it. Debian packages no MNIST.
        "mnist", "MNIST", {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        }, "md5", ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        "PIGEON_MNIST", "PIGEON_MNIST_URL", download_bytes=11_594_722),
    "cifar10": Source(
        # MD5 as published on https://www.cs.toronto.edu/~kriz/cifar.html
        "cifar10", "CIFAR-10", {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}, "md5",
        ("https://www.cs.toronto.edu/~kriz/",), "PIGEON_CIFAR10", "PIGEON_CIFAR10_URL",
        unpacked=tuple(f"{CIFAR10_DIR}/{n}" for n in (*CIFAR10_TRAIN, "test_batch.bin", "batches.meta.txt")),
        download_bytes=170_052_171),
    "cifar100": Source(
        "cifar100", "CIFAR-100", {"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"}, "md5",
        ("https://www.cs.toronto.edu/~kriz/",), "PIGEON_CIFAR100", "PIGEON_CIFAR100_URL",
        unpacked=tuple(f"{CIFAR100_DIR}/{n}" for n in ("train.bin", "test.bin", "fine_label_names.txt")),
        download_bytes=168_513_733),
}


def source(name: str) -> Source:
    """A built-in's download source. Fashion-MNIST's files and folders are read from FASHION_FILES and
    SYSTEM_DIRS at call time, the names its tests (and anyone pinning another copy) substitute."""
    if name == "fashion-mnist":
        return dataclasses.replace(SOURCES[name], files=FASHION_FILES, system_dirs=SYSTEM_DIRS)
    return SOURCES[name]


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


def download_fashion_mnist(dest: Path, base_url: str | None = None, timeout: float = 30.0) -> None:
    """Fetch the four original files into `dest`, checking each one's checksum before keeping it.

    From $PIGEON_FASHION_MNIST_URL when set (a mirror), else the dataset's original address; never with
    PIGEON_OFFLINE=1."""
    download(source("fashion-mnist"), dest, (base_url,) if base_url else None, timeout)


def _idx_splits(copy: Copy, classes: int) -> dict[str, Split]:
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        arrays = []
        for kind in ("images-idx3", "labels-idx1"):
            path = copy.paths[f"{prefix}-{kind}-ubyte.gz"]
            try:
                arrays.append(read_idx(gzip.decompress(path.read_bytes())))
            except ValueError as err:
                raise DatasetError(f"{path}: {err}; delete it and pigeon downloads it again") from None
        images, labels = arrays
        if images.ndim != 3 or labels.shape != images.shape[:1] or (labels.size and labels.max() >= classes):
            raise DatasetError(f"{copy.folder}: {prefix}-* hold images {images.shape} and labels {labels.shape}, "
                               f"not N 28x28 images with N labels below {classes}; replace them with the originals")
        splits[split] = Split(images[:, None], labels.astype(np.int64))
    return splits


def fashion_mnist(cache_dir: str | None, verbose: bool) -> Loaded:
    return _idx_splits(local_copy(source("fashion-mnist"), cache_dir, verbose), 10), FASHION_CLASSES, 0.5


def mnist(cache_dir: str | None, verbose: bool) -> Loaded:
    splits = _idx_splits(local_copy(source("mnist"), cache_dir, verbose), 10)
    return splits, tuple(str(d) for d in range(10)), 0.0  # a mirrored digit is a different symbol


def _members(copy: Copy, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The archive members `wanted` (paths inside it) by file name, read from the archive or the extracted
    folder. Members are read straight from the stream, never extracted, so no member path can escape."""
    if not copy.packed:
        return {name: path.read_bytes() for name, path in copy.paths.items()}
    (archive,) = copy.paths.values()
    out = {}
    with tarfile.open(archive, "r|gz") as tar:  # one pass over the stream: read each member as it comes
        for member in tar:
            if member.isfile() and member.name.removeprefix("./") in wanted:
                fh = tar.extractfile(member)
                assert fh is not None  # a regular file always has contents
                out[Path(member.name).name] = fh.read()
    missing = sorted({Path(m).name for m in wanted} - set(out))
    if missing:
        raise DatasetError(f"{archive}: {', '.join(missing)} missing from the archive; delete it and pigeon "
                           "downloads it again")
    return out


def _cifar_records(where: str, raw: bytes, label_bytes: int, classes: int) -> Split:
    """A CIFAR binary file: records of label byte(s) (CIFAR-100: coarse, fine) then 3072 bytes, R G B planes of
    32x32, row-major: already [C, H, W]."""
    size = label_bytes + 3 * 32 * 32
    if not raw or len(raw) % size:
        raise DatasetError(f"{where}: {len(raw)} bytes is not a whole number of {size}-byte CIFAR records; "
                           "replace it with the original")
    records = np.frombuffer(raw, np.uint8).reshape(-1, size)
    labels = records[:, label_bytes - 1].astype(np.int64)  # the last label byte: CIFAR-100's fine label
    if labels.max() >= classes:
        raise DatasetError(f"{where}: label {labels.max()} in a {classes}-class dataset; replace it with the original")
    return Split(np.ascontiguousarray(records[:, label_bytes:]).reshape(-1, 3, 32, 32), labels)


def _cifar(name: str, train: tuple[str, ...], test: str, names: str, label_bytes: int, classes: int
           ) -> Callable[[str | None, bool], Loaded]:
    def load(cache_dir: str | None, verbose: bool) -> Loaded:
        src = source(name)
        copy = local_copy(src, cache_dir, verbose)
        raw = _members(copy, src.unpacked)
        where = str(next(iter(copy.paths.values()))) if copy.packed else str(copy.folder)
        parts = [_cifar_records(f"{where}: {n}", raw.pop(n), label_bytes, classes) for n in train]
        splits = {"train": Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])),
                  "test": _cifar_records(f"{where}: {test}", raw.pop(test), label_bytes, classes)}
        class_names = tuple(line.strip() for line in raw[names].decode("utf-8").splitlines() if line.strip())
        if len(class_names) != classes:
            raise DatasetError(f"{where}: {names} lists {len(class_names)} class names, not {classes}; replace "
                               "it with the original")
        return splits, class_names, 0.5
    return load


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as (float64 [N, 8, 8] pixels of 0..16, int labels), the same arrays as
    `sklearn.datasets.load_digits`.

    Read from the CSV that scikit-learn ships, without importing scikit-learn: its import takes about 2 s,
    longer than training on the digits. Falls back to `load_digits` if a release moves the file.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise DatasetError("the digits dataset ships with scikit-learn: pip install 'pigeon[digits]'")
    for folder in spec.submodule_search_locations or ():
        csv = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            with gzip.open(csv, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def digits(cache_dir: str | None, verbose: bool) -> Loaded:
    pixels, labels = digits_arrays()
    # Pixel values are 0..16; stretch them to 0..255 so digits look like any other uint8 image.
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train_idx, test_idx = stratified_split(labels, 0.25, seed=0)  # fixed: the same test split for everyone
    splits = {"train": Split(images[train_idx], labels[train_idx]),
              "test": Split(images[test_idx], labels[test_idx])}
    return splits, tuple(str(d) for d in range(10)), 0.0  # a mirrored digit is a different symbol


@dataclass(frozen=True)
class Builtin:
    load: Callable[[str | None, bool], Loaded]
    what: str
    train: int
    test: int
    classes: int
    shape: tuple[int, int, int]  # channels, height, width


BUILTINS = {
    "fashion-mnist": Builtin(fashion_mnist, "Zalando's clothing images, grayscale", 60_000, 10_000, 10, (1, 28, 28)),
    "digits": Builtin(digits, "scikit-learn's handwritten digits, grayscale", 1_347, 450, 10, (1, 8, 8)),
    "mnist": Builtin(mnist, "handwritten digits, grayscale", 60_000, 10_000, 10, (1, 28, 28)),
    "cifar10": Builtin(_cifar("cifar10", CIFAR10_TRAIN, "test_batch.bin", "batches.meta.txt", 1, 10),
                       "tiny colour photos of 10 objects", 50_000, 10_000, 10, (3, 32, 32)),
    "cifar100": Builtin(_cifar("cifar100", ("train.bin",), "test.bin", "fine_label_names.txt", 2, 100),
                        "tiny colour photos, 100 fine classes", 50_000, 10_000, 100, (3, 32, 32)),
}


@dataclass(frozen=True)
class BuiltinInfo:
    """One line of `pigeon datasets`."""

    name: str
    what: str
    train: int
    test: int
    classes: int
    image: str  # "28x28 gray", "32x32 RGB"
    download_bytes: int  # 0: nothing to download
    found: str | None  # where the copy on this machine is (not yet verified), or None
    url: str | None  # where it is downloaded from when not found

    @property
    def where(self) -> str:
        if self.found is not None:
            return self.found
        if self.url is None:
            return "not installed: pip install 'pigeon[digits]'"
        if offline():
            return f"not found (PIGEON_OFFLINE=1: will not download from {self.url})"
        return f"not found (will download from {self.url})"


def describe(cache_dir: str | None = None) -> list[BuiltinInfo]:
    """Every built-in and where it is found, from folder listings only: nothing is read, hashed or fetched."""
    out = []
    for name, b in BUILTINS.items():
        c, h, w = b.shape
        common = dict(name=name, what=b.what, train=b.train, test=b.test, classes=b.classes,
                      image=f"{w}x{h} {'gray' if c == 1 else 'RGB'}")
        if name == "digits":
            here = importlib.util.find_spec("sklearn") is not None
            out.append(BuiltinInfo(**common, download_bytes=0, found="inside scikit-learn" if here else None,
                                   url=None))
            continue
        src = source(name)
        copy, url = find(src, cache_dir), src.base_urls()[0]
        url = url.rstrip("/") + "/" + next(iter(src.files)) if len(src.files) == 1 else url  # one file: its own URL
        out.append(BuiltinInfo(**common, download_bytes=src.download_bytes,
                               found=None if copy is None else str(copy.folder), url=url))
    return out


def _resized(split: Split, spec: Preprocess, key: str, cache_dir: str | None) -> Split:
    from PIL import Image

    def build(tmp: Path) -> tuple[list[str], dict]:
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(split), spec.channels, *spec.hw))
        for i, img in enumerate(split.images):
            pixels = np.asarray(img)
            pil = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
            out[i] = image_to_array(pil, spec.imgsz, spec.channels, spec.resize)
        out.flush()
        return ["images"], {}

    arrays, _, _ = cache.load_or_build(cache.cache_root(cache_dir), key, build)
    return Split(arrays["images"], split.labels)


def load_builtin(name: str, *, imgsz: Size | None, channels: int | None, resize: str,
                 cache_dir: str | None, verbose: bool = True) -> Dataset:
    if channels not in (None, 1, 3):
        raise DatasetError(f"{name} is a built-in of grayscale or RGB images: choose --channels 1 or 3 (or leave it "
                           f"unset), not {channels}; other band counts are for raster folders (.npy, TIFF, DICOM)")
    splits, classes, fliplr = BUILTINS[name].load(cache_dir, verbose)
    native_c, native = splits["train"].images.shape[1], splits["train"].images.shape[-1]
    imgsz, channels = imgsz or native, channels or native_c
    spec = Preprocess(imgsz=imgsz, channels=channels, resize=resize, mean=(0.5,) * channels,
                      std=(0.5,) * channels)  # placeholders until the stats below; one per channel
    key = cache.fingerprint([name, native, spec.to_dict()])
    if (imgsz, channels) != (native, native_c):
        splits = {s: _resized(sp, spec, cache.fingerprint([key, s]), cache_dir) for s, sp in splits.items()}
    mean, std = channel_stats(splits["train"].images)
    spec = Preprocess(imgsz=imgsz, channels=channels, resize=resize, mean=mean, std=std)
    return Dataset(name=name, classes=classes, splits=splits, preprocess=spec, fingerprint=key, fliplr=fliplr,
                   cache_entry=key)
