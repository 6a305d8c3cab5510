"""MNIST, CIFAR-10 and CIFAR-100: found on this machine, else downloaded once and verified; refused offline with
the fix; and `pigeon datasets`. The "original locations" are a server on 127.0.0.1 serving tiny files built
here from the formats' descriptions, and the digests checked are those files' own."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import re
import socket
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from loopback import CountingServer

import pigeon
from pigeon.cli import main
from pigeon.data import builtins, load_dataset
from pigeon.errors import DatasetError

NAMES = ("mnist", "cifar10", "cifar100")
TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
ENV = {"mnist": "PIGEON_MNIST", "cifar10": "PIGEON_CIFAR10", "cifar100": "PIGEON_CIFAR100"}


@dataclass(frozen=True)
class Fixture:
    files: dict[str, bytes]  # as published: served and checked by these bytes' MD5
    members: dict[str, bytes]  # CIFAR: the archive's members by their path inside it
    train: tuple[np.ndarray, np.ndarray]  # images [N, C, H, W], labels
    test: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]


def _idx(arr: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes, from the format's description."""
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def _mnist(rng: np.random.Generator) -> Fixture:
    train = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20, dtype=np.uint8) % 10
    test = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), np.arange(10, dtype=np.uint8)[::-1].copy()
    raw = {"train-images-idx3-ubyte.gz": _idx(train[0]), "train-labels-idx1-ubyte.gz": _idx(train[1]),
           "t10k-images-idx3-ubyte.gz": _idx(test[0]), "t10k-labels-idx1-ubyte.gz": _idx(test[1])}
    return Fixture({n: gzip.compress(d, mtime=0) for n, d in raw.items()}, {}, (train[0][:, None], train[1]),
                   (test[0][:, None], test[1]), tuple("0123456789"))


def _records(rng: np.random.Generator, n: int, classes: int, coarse: bool) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n CIFAR binary records: [coarse label,] label, then the red, green and blue 32x32 planes, row-major."""
    planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    blob = b"".join((bytes([label // 5]) if coarse else b"") + bytes([label]) + r.tobytes() + g.tobytes() + b.tobytes()
                    for label, (r, g, b) in zip(labels, planes))
    return blob, planes, labels


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cifar10(rng: np.random.Generator) -> Fixture:
    members, images, labels = {}, [], []
    for i in range(1, 6):
        blob, im, lab = _records(rng, 20, 10, coarse=False)
        members[f"cifar-10-batches-bin/data_batch_{i}.bin"] = blob
        images.append(im)
        labels.append(lab)
    blob, test_images, test_labels = _records(rng, 20, 10, coarse=False)
    members["cifar-10-batches-bin/test_batch.bin"] = blob
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    members["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(classes) + "\n\n").encode()
    members["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    return Fixture({"cifar-10-binary.tar.gz": _tar_gz(members)}, members,
                   (np.concatenate(images), np.concatenate(labels)), (test_images, test_labels), classes)


def _cifar100(rng: np.random.Generator) -> Fixture:
    train, train_images, train_labels = _records(rng, 100, 100, coarse=True)
    test, test_images, test_labels = _records(rng, 20, 100, coarse=True)
    classes = tuple(f"fine{i:02d}" for i in range(100))
    members = {"cifar-100-binary/train.bin": train, "cifar-100-binary/test.bin": test,
               "cifar-100-binary/fine_label_names.txt": "\n".join(classes).encode(),
               "cifar-100-binary/coarse_label_names.txt": "\n".join(f"coarse{i}" for i in range(20)).encode()}
    return Fixture({"cifar-100-binary.tar.gz": _tar_gz(members)}, members, (train_images, train_labels),
                   (test_images, test_labels), classes)


@pytest.fixture(scope="module")
def fixtures() -> dict[str, Fixture]:
    rng = np.random.default_rng(0)
    return {"mnist": _mnist(rng), "cifar10": _cifar10(rng), "cifar100": _cifar100(rng)}


class Server(CountingServer):
    """Serves `files` ({url path: bytes}) on 127.0.0.1 and counts requests and connections."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the standard library's naming
                owner.requests.append(self.path)
                blob = owner.files.get(self.path)
                self.send_response(404 if blob is None else 200)
                self.send_header("Content-Length", str(len(blob or b"")))
                self.end_headers()
                self.wfile.write(blob or b"")

        super().__init__(Handler)


@pytest.fixture(autouse=True)
def _no_copies_mirrors_or_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the environment this suite runs in: no copy named by a variable, no mirror, no proxy."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "PIGEON_OFFLINE",
                *ENV.values(), *(f"{v}_URL" for v in ENV.values())):
        monkeypatch.delenv(var, raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")


@pytest.fixture
def server(fixtures: dict[str, Fixture], monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The fixtures served at /mnist/ and /kriz/; MNIST's first address (/gone/) answers 404, as the original
    often does. Each source trusts its fixture's MD5s."""
    srv = Server()
    urls = {"mnist": (f"{srv.url}/gone/", f"{srv.url}/mnist/"), "cifar10": (f"{srv.url}/kriz/",),
            "cifar100": (f"{srv.url}/kriz/",)}
    for name, fix in fixtures.items():
        folder = urls[name][-1].removeprefix(srv.url)
        srv.files.update({folder + f: blob for f, blob in fix.files.items()})
        md5 = {f: hashlib.md5(blob).hexdigest() for f, blob in fix.files.items()}
        assert list(md5) == list(builtins.SOURCES[name].files)  # the fixture has the real files' names
        monkeypatch.setitem(builtins.SOURCES, name, dataclasses.replace(builtins.SOURCES[name], files=md5,
                                                                        urls=urls[name]))
    yield srv
    srv.close()


def _same(ds: pigeon.data.Dataset, fix: Fixture) -> None:
    for split, (images, labels) in (("train", fix.train), ("test", fix.test)):
        assert ds.splits[split].images.dtype == np.uint8 and ds.splits[split].labels.dtype == np.int64
        np.testing.assert_array_equal(ds.splits[split].images, images)
        np.testing.assert_array_equal(ds.splits[split].labels, labels)
    assert ds.classes == fix.classes


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_mnist_is_downloaded_once_trying_its_addresses_in_order(server: Server, fixtures: dict[str, Fixture],
                                                                cache_dir: Path) -> None:
    ds = load_dataset("mnist", cache_dir=str(cache_dir), verbose=False)
    _same(ds, fixtures["mnist"])
    assert ds.preprocess.imgsz == 28 and ds.preprocess.channels == 1 and ds.fliplr == 0.0
    names = list(fixtures["mnist"].files)
    # the dead original once, then the address that answered first for the rest
    assert server.requests == [f"/gone/{names[0]}"] + [f"/mnist/{n}" for n in names]
    dest = cache_dir / "datasets" / "mnist"
    assert _files(dest) == sorted(names)
    server.requests.clear()
    connections = server.connections
    again = load_dataset("mnist", cache_dir=str(cache_dir), verbose=False)
    np.testing.assert_array_equal(again.splits["train"].images, ds.splits["train"].images)
    assert server.requests == [] and server.connections == connections


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_is_downloaded_once_and_read_from_the_archive(server: Server, fixtures: dict[str, Fixture],
                                                            cache_dir: Path, name: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    ds = load_dataset(name, cache_dir=str(cache_dir), verbose=True)
    dest = cache_dir / "datasets" / name
    assert f"{TITLES[name]} not found locally; downloading to {dest}" in capsys.readouterr().out
    _same(ds, fixtures[name])  # CIFAR-100: the fine labels
    assert ds.preprocess.imgsz == 32 and ds.preprocess.channels == 3 and len(ds.preprocess.mean) == 3
    assert ds.fliplr == 0.5
    assert _files(dest) == list(fixtures[name].files)  # the archive alone: nothing extracted
    assert server.requests == [f"/kriz/{n}" for n in fixtures[name].files]
    server.requests.clear()
    load_dataset(name, cache_dir=str(cache_dir), verbose=False)
    assert server.requests == []


def test_a_builtin_in_colour_resizes_and_converts(server: Server, fixtures: dict[str, Fixture],
                                                  cache_dir: Path) -> None:
    gray = load_dataset("cifar10", channels=1, imgsz=16, cache_dir=str(cache_dir), verbose=False)
    assert gray.splits["train"].images.shape == (100, 1, 16, 16) and gray.preprocess.channels == 1
    same = load_dataset("cifar10", channels=3, imgsz=32, cache_dir=str(cache_dir), verbose=False)
    np.testing.assert_array_equal(same.splits["test"].images, fixtures["cifar10"].test[0])


@pytest.mark.parametrize("name", NAMES)
def test_a_tampered_download_is_refused_and_nothing_is_kept(server: Server, fixtures: dict[str, Fixture],
                                                            cache_dir: Path, name: str) -> None:
    first = next(iter(fixtures[name].files))
    path = next(p for p in server.files if p.endswith("/" + first))
    blob = server.files[path]
    server.files[path] = blob[:-100] + bytes(100)  # the same size, the end of the stream zeroed
    md5 = builtins.SOURCES[name].files[first]
    msg = (rf"{re.escape(server.url + path)} does not match the published {TITLES[name]} file \(checksum "
           rf"mismatch\); nothing was saved \(the published MD5 of {re.escape(first)} is {md5}\)\. Fix: try again")
    with pytest.raises(DatasetError, match=msg):
        load_dataset(name, cache_dir=str(cache_dir), verbose=False)
    assert _files(cache_dir / "datasets" / name) == []  # not even a temporary file


@pytest.mark.parametrize("name", NAMES)
def test_offline_is_refused_with_the_fix_and_without_a_connection(server: Server, cache_dir: Path, name: str,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_OFFLINE", "1")
    dest = cache_dir / "datasets" / name
    src = builtins.SOURCES[name]
    msg = (rf"^--data {name}: the dataset is not on this machine and PIGEON_OFFLINE=1 forbids downloading it from "
           rf"{re.escape(src.urls[0] + next(iter(src.files)))}\. Looked in {re.escape(str(dest))}\. Fix: copy "
           rf".*{re.escape(next(iter(src.files)))}.* set {ENV[name]} to it, or place .* in {re.escape(str(dest))}, "
           rf"or set {ENV[name]}_URL to a mirror .*unset PIGEON_OFFLINE")
    with pytest.raises(DatasetError, match=msg):
        load_dataset(name, cache_dir=str(cache_dir), verbose=True)
    assert server.connections == 0 and not dest.exists()
    assert "downloading" not in capsys.readouterr().out


def test_unreachable_addresses_are_each_named_with_every_place_looked(server: Server, cache_dir: Path,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = builtins.SOURCES["mnist"]
    monkeypatch.setitem(builtins.SOURCES, "mnist", dataclasses.replace(src, urls=(f"{server.url}/a/",
                                                                                  f"{server.url}/b/")))
    monkeypatch.setenv("PIGEON_MNIST", str(tmp_path / "empty"))
    first = next(iter(src.files))
    msg = (rf"^MNIST is not on this machine and {re.escape(server.url)}/a/{first} could not be fetched \(HTTP Error "
           rf"404.*\); {re.escape(server.url)}/b/{first} could not be fetched .*Looked in "
           rf"{re.escape(str(tmp_path / 'empty'))}, {re.escape(str(cache_dir / 'datasets' / 'mnist'))}\. Fix: .*"
           rf"PIGEON_MNIST")
    with pytest.raises(DatasetError, match=msg):
        load_dataset("mnist", cache_dir=str(cache_dir), verbose=False)


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, blob in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)
    return folder


@pytest.mark.parametrize(("name", "layout"), [("mnist", "files"), ("cifar10", "files"), ("cifar10", "extracted"),
                                              ("cifar100", "extracted-folder-itself")])
def test_a_copy_in_the_env_folder_is_used_without_a_request(server: Server, fixtures: dict[str, Fixture],
                                                            tmp_path: Path, cache_dir: Path, name: str,
                                                            layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fix = fixtures[name]
    folder = _write(tmp_path / "copy", fix.files if layout == "files" else fix.members)
    if layout == "extracted-folder-itself":
        folder = folder / next(iter(fix.members)).split("/")[0]
    monkeypatch.setenv(ENV[name], str(folder))
    _same(load_dataset(name, cache_dir=str(cache_dir), verbose=False), fix)
    assert server.connections == 0 and list(cache_dir.iterdir()) == []
    assert next(d for d in pigeon.datasets(cache_dir) if d.name == name).found == str(folder)


def test_a_corrupt_local_copy_is_reported(server: Server, fixtures: dict[str, Fixture], tmp_path: Path,
                                          cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (archive,) = fixtures["cifar10"].files
    folder = _write(tmp_path / "copy", {archive: fixtures["cifar10"].files[archive][:-1]})
    monkeypatch.setenv("PIGEON_CIFAR10", str(folder))
    with pytest.raises(DatasetError, match=re.escape(f"{folder}: {archive} corrupt (checksum mismatch: not the "
                                                     "published CIFAR-10 file); delete it and pigeon downloads")):
        load_dataset("cifar10", cache_dir=str(cache_dir), verbose=False)
    assert server.connections == 0


def test_a_truncated_extracted_batch_is_reported(fixtures: dict[str, Fixture], tmp_path: Path, cache_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    members = dict(fixtures["cifar10"].members)
    members["cifar-10-batches-bin/data_batch_3.bin"] = members["cifar-10-batches-bin/data_batch_3.bin"][:-5]
    folder = _write(tmp_path / "copy", members)
    monkeypatch.setenv("PIGEON_CIFAR10", str(folder))
    with pytest.raises(DatasetError, match=re.escape(f"{folder}: data_batch_3.bin: 61455 bytes is not a whole "
                                                     "number of 3073-byte CIFAR records")):
        load_dataset("cifar10", cache_dir=str(cache_dir), verbose=False)


def test_pigeon_datasets_lists_sizes_and_places_without_the_network(server: Server, fixtures: dict[str, Fixture],
                                                                    tmp_path: Path, cache_dir: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _write(tmp_path / "copy", fixtures["cifar10"].files)
    monkeypatch.setenv("PIGEON_CIFAR10", str(folder))
    assert main(["datasets", "--cache-dir", str(cache_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "train", "test", "classes", "image", "download", "where"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["fashion-mnist", "digits", "mnist", "cifar10", "cifar100"]
    assert rows["cifar10"].split()[1:8] == ["50,000", "10,000", "10", "32x32", "RGB", "170.1", "MB"]
    assert rows["cifar10"].endswith(f"  {folder}")
    assert rows["cifar100"].split()[3] == "100"
    assert rows["mnist"].endswith(f"  not found (will download from {server.url}/gone/)")
    assert rows["cifar100"].endswith(f"  not found (will download from {server.url}/kriz/cifar-100-binary.tar.gz)")
    assert rows["mnist"].split()[5:8] == ["gray", "11.6", "MB"]
    positions = {line.index("MB") for line in lines if "MB" in line}
    assert len(positions) == 1  # the columns line up
    assert server.connections == 0 and list(cache_dir.iterdir()) == []
    load_dataset("mnist", cache_dir=str(cache_dir), verbose=False)  # once downloaded, the cache is where it is
    info = {d.name: d for d in pigeon.datasets(cache_dir)}
    assert info["mnist"].found == str(cache_dir / "datasets" / "mnist") and info["mnist"].where == info["mnist"].found
    assert (info["mnist"].train, info["mnist"].test, info["mnist"].classes) == (60_000, 10_000, 10)


def test_pigeon_datasets_opens_no_connection_at_all(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"pigeon datasets opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert main(["datasets"]) == 0  # the real table, the real addresses
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in capsys.readouterr().out


def test_training_on_cifar10_end_to_end(server: Server, fixtures: dict[str, Fixture], tmp_path: Path) -> None:
    run = pigeon.train("cifar10", epochs=1, batch=64, plots=False, verbose=False, device="cpu", amp="off",
                       project=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    clf = pigeon.load(run.best, device="cpu")
    assert clf.classes == fixtures["cifar10"].classes and run.test is not None and run.test["n"] == 20
    assert clf.predict(fixtures["cifar10"].test[0][0].transpose(1, 2, 0)).label in clf.classes
