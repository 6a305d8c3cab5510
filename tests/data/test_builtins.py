"""Built-in datasets: digits, Fashion-MNIST (local files, IDX parsing, and an offline-tested download)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pigeon.data import builtins, load_dataset
from pigeon.data.builtins import FASHION_CLASSES, download_fashion_mnist, read_idx
from pigeon.errors import DatasetError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx(arr: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes, written by hand from the format's description."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


# ---- digits ----------------------------------------------------------------------------------------------


def test_digits_split_labels_and_range(cache_dir: Path, digits_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    ds = load_dataset("digits", cache_dir=str(cache_dir), verbose=False)
    train, test = ds.splits["train"], ds.splits["test"]
    assert (len(train), len(test)) == (1347, 450) and list(ds.splits) == ["train", "test"]
    assert ds.classes == tuple("0123456789") and ds.fliplr == 0.0
    assert train.images.shape == (1347, 1, 8, 8) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and set(np.unique(test.labels)) == set(range(10))
    assert train.images.min() == 0 and train.images.max() == 255
    images, labels = digits_arrays
    # stratified: a quarter of every class is held out
    per_class = np.bincount(labels)
    assert np.bincount(test.labels).tolist() == [round(n * 0.25) for n in per_class]
    # train and test partition the original images, each with its own label
    both = np.concatenate([train.images[:, 0], test.images[:, 0]])
    both_labels = np.concatenate([train.labels, test.labels])
    order, ref = np.lexsort(both.reshape(len(both), -1).T), np.lexsort(images.reshape(len(images), -1).T)
    np.testing.assert_array_equal(both[order], images[ref])
    np.testing.assert_array_equal(both_labels[order], labels[ref])
    assert ds.preprocess.imgsz == 8 and ds.preprocess.channels == 1
    assert list(cache_dir.iterdir()) == []  # native size: nothing to cache


def test_digits_are_read_without_importing_sklearn_and_match_load_digits(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels, labels = builtins.digits_arrays()
    np.testing.assert_array_equal(pixels, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)
    # a release that moved the CSV: the same arrays through load_digits
    spec = type("Spec", (), {"submodule_search_locations": [str(tmp_path)]})()
    monkeypatch.setattr(builtins.importlib.util, "find_spec", lambda name: spec)
    moved_pixels, moved_labels = builtins.digits_arrays()
    np.testing.assert_array_equal(moved_pixels, bunch.images)
    np.testing.assert_array_equal(moved_labels, bunch.target)
    monkeypatch.setattr(builtins.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match=r"pigeon\[digits\]"):
        builtins.digits_arrays()


def test_digits_test_split_is_fixed(cache_dir: Path) -> None:
    a = load_dataset("digits", cache_dir=str(cache_dir), verbose=False)
    b = load_dataset("digits", cache_dir=str(cache_dir), verbose=False)
    np.testing.assert_array_equal(a.splits["test"].images, b.splits["test"].images)
    np.testing.assert_array_equal(a.splits["test"].labels, b.splits["test"].labels)
    assert a.fingerprint == b.fingerprint


def test_resized_builtin_goes_through_the_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_dataset("digits", imgsz=16, cache_dir=str(cache_dir), verbose=False)
    assert ds.splits["train"].images.shape == (1347, 1, 16, 16) and ds.splits["test"].images.shape[0] == 450
    assert ds.preprocess.imgsz == 16 and ds.preprocess.resize == "crop"
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert len(entries) == 2  # one per split
    assert all(isinstance(s.images, np.memmap) for s in ds.splits.values())

    def no_resizing(*args: object) -> None:
        raise AssertionError("a cache hit resized an image")

    monkeypatch.setattr(builtins, "image_to_array", no_resizing)
    again = load_dataset("digits", imgsz=16, cache_dir=str(cache_dir), verbose=False)
    np.testing.assert_array_equal(again.splits["train"].images, ds.splits["train"].images)
    assert sorted(p.name for p in cache_dir.iterdir()) == entries
    monkeypatch.undo()
    rgb = load_dataset("digits", imgsz=16, channels=3, cache_dir=str(cache_dir), verbose=False)
    assert rgb.splits["test"].images.shape == (450, 3, 16, 16) and len(rgb.preprocess.mean) == 3
    np.testing.assert_array_equal(rgb.splits["test"].images[:, 1], ds.splits["test"].images[:, 0])
    assert len(list(cache_dir.iterdir())) == 4


# ---- Fashion-MNIST from the machine's copy -----------------------------------------------------------------


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="no /usr/share/datasets/fashion-mnist "
                    "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_system_copy(cache_dir: Path) -> None:
    ds = load_dataset("fashion-mnist", cache_dir=str(cache_dir), verbose=False)
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert ds.classes == FASHION_CLASSES and len(ds.classes) == 10 and ds.classes[9] == "Ankle boot"
    assert ds.preprocess.imgsz == 28 and ds.fliplr == 0.5
    assert list(cache_dir.iterdir()) == []  # found locally: nothing downloaded, nothing cached


# ---- IDX -------------------------------------------------------------------------------------------------


def test_read_idx_on_hand_built_bytes() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(_idx(images))
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)
    labels = np.array([9, 0, 3], np.uint8)
    np.testing.assert_array_equal(read_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 9, 0, 3])), labels)
    big = np.zeros((300, 2), np.uint8)  # a dimension above 255 checks the big-endian header
    assert read_idx(_idx(big)).shape == (300, 2)


@pytest.mark.parametrize(("raw", "match"), [
    (b"", "not an unsigned-byte IDX"),
    (b"\x00\x00", "not an unsigned-byte IDX"),
    (b"\x1f\x8b\x08\x00" + b"\x00" * 12, "not an unsigned-byte IDX"),  # still gzipped
    (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0\0\0\0", "not an unsigned-byte IDX"),  # float data
    (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3]), r"header says \(5,\) but holds 3 bytes"),  # truncated
    (bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]), r"header says \(2,\) but holds 3 bytes"),  # trailing junk
    (bytes([0, 0, 8, 3, 0, 0, 0, 2]), None),  # the dimensions themselves are cut off
])
def test_read_idx_refuses_corrupt_bytes(raw: bytes, match: str | None) -> None:
    with pytest.raises(ValueError, match=match):
        read_idx(raw)


# ---- the download, served from this machine ----------------------------------------------------------------


@pytest.fixture
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Four small, valid Fashion-MNIST-shaped .gz files in tmp_path/served; FASHION_FILES trusts them."""
    rng = np.random.default_rng(0)
    raw = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte.gz": _idx(np.arange(20, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte.gz": _idx(np.arange(10, dtype=np.uint8)),
    }
    assert list(raw) == list(builtins.FASHION_FILES)
    served = tmp_path / "served"
    served.mkdir()
    blobs = {}
    for name, data in raw.items():
        blobs[name] = gzip.compress(data, mtime=0)
        (served / name).write_bytes(blobs[name])
    monkeypatch.setattr(builtins, "FASHION_FILES", {n: hashlib.sha256(d).hexdigest() for n, d in raw.items()})
    monkeypatch.setattr(builtins, "SYSTEM_DIRS", ())  # never pick up the machine's real copy here
    return blobs


class _Server:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        log = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                log.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler,
                                                                                         directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path: Path, fake_fashion: dict[str, bytes],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    """An HTTP server on 127.0.0.1 serving the fake files (no proxy in between)."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    srv = _Server(tmp_path / "served")
    yield srv
    srv.close()


def _no_temp_files(folder: Path) -> bool:
    return all(not p.name.startswith(".") and not p.name.endswith(".tmp") for p in folder.iterdir())


def test_download_verifies_and_saves(server: _Server, fake_fashion: dict[str, bytes], tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    download_fashion_mnist(dest, base_url=server.url)
    assert sorted(p.name for p in dest.iterdir()) == sorted(fake_fashion)
    for name, blob in fake_fashion.items():
        assert (dest / name).read_bytes() == blob
    assert sorted(server.requests) == sorted(f"/{n}" for n in fake_fashion)
    server.requests.clear()
    download_fashion_mnist(dest, base_url=server.url)  # everything verified already: no requests
    assert server.requests == []


def test_download_saves_atomically(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a write that dies before the rename (here: fsync fails) leaves neither a partial file nor a temp file
    def dying_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", dying_fsync)
    dest = tmp_path / "dest"
    with pytest.raises(OSError, match="disk full"):
        download_fashion_mnist(dest, base_url=server.url)
    assert list(dest.iterdir()) == []


def test_download_replaces_only_a_bad_local_file(server: _Server, fake_fashion: dict[str, bytes],
                                                 tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    for name, blob in fake_fashion.items():
        (dest / name).write_bytes(blob)
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"stale"))
    download_fashion_mnist(dest, base_url=server.url)
    assert server.requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == fake_fashion["t10k-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize("served", [gzip.compress(b"tampered"), b"not gzip at all",
                                    gzip.compress(b"x" * 100)[:10] + b"\xff" * 64])  # a broken deflate stream
def test_download_refuses_a_mismatching_file(server: _Server, fake_fashion: dict[str, bytes], tmp_path: Path,
                                             served: bytes) -> None:
    bad = "t10k-images-idx3-ubyte.gz"
    (tmp_path / "served" / bad).write_bytes(served)
    dest = tmp_path / "dest"
    msg = "/" + re.escape(bad) + (r" does not match the published Fashion-MNIST file "
                                  r"\(checksum mismatch\); nothing was saved")
    with pytest.raises(DatasetError, match=msg):
        download_fashion_mnist(dest, base_url=server.url)
    # the files before it were verified and kept; the bad one and those after it were not written
    assert sorted(p.name for p in dest.iterdir()) == sorted(list(fake_fashion)[:2])
    assert _no_temp_files(dest)


def test_download_of_a_missing_file_is_a_dataset_error(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "served" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz could not be fetched.*404"):
        download_fashion_mnist(tmp_path / "dest", base_url=server.url)


def test_unreachable_url_fails_fast_with_the_fix(fake_fashion: dict[str, bytes], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    dest = tmp_path / "dest"
    start = time.perf_counter()
    msg = (r"http://127\.0\.0\.1:9/train-images-idx3-ubyte\.gz could not be fetched.*"
           r"apt-get install dataset-fashion-mnist.*PIGEON_FASHION_MNIST")
    with pytest.raises(DatasetError, match=msg):
        download_fashion_mnist(dest, base_url="http://127.0.0.1:9/", timeout=5)
    assert time.perf_counter() - start < 5
    assert not dest.exists() or list(dest.iterdir()) == []


def test_load_downloads_into_the_cache_then_works_offline(server: _Server, cache_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PIGEON_FASHION_MNIST_URL", server.url)
    ds = load_dataset("fashion-mnist", cache_dir=str(cache_dir), verbose=True)
    dest = cache_dir / "datasets" / "fashion-mnist"
    assert f"downloading to {dest}" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == sorted(builtins.FASHION_FILES)
    assert ds.splits["train"].images.shape == (20, 1, 28, 28)
    assert ds.splits["test"].images.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(ds.splits["test"].labels, np.arange(10))
    assert ds.classes == FASHION_CLASSES
    server.requests.clear()
    monkeypatch.setenv("PIGEON_FASHION_MNIST_URL", "http://127.0.0.1:9/")  # offline from now on
    again = load_dataset("fashion-mnist", cache_dir=str(cache_dir), verbose=False)
    np.testing.assert_array_equal(again.splits["train"].images, ds.splits["train"].images)
    assert server.requests == []


def test_pigeon_fashion_mnist_env_folder_is_used(fake_fashion: dict[str, bytes], tmp_path: Path,
                                                 cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_FASHION_MNIST", str(tmp_path / "served"))
    monkeypatch.setenv("PIGEON_FASHION_MNIST_URL", "http://127.0.0.1:9/")  # would fail if it tried
    ds = load_dataset("fashion-mnist", cache_dir=str(cache_dir), verbose=False)
    assert len(ds.splits["train"]) == 20 and list(cache_dir.iterdir()) == []


def test_a_corrupt_local_copy_is_reported(fake_fashion: dict[str, bytes], tmp_path: Path, cache_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "served"
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"x" * 10)[:10] + b"\xff" * 20)
    monkeypatch.setenv("PIGEON_FASHION_MNIST", str(folder))
    with pytest.raises(DatasetError, match=re.escape(f"{folder}: train-labels-idx1-ubyte.gz corrupt")):
        load_dataset("fashion-mnist", cache_dir=str(cache_dir), verbose=False)
