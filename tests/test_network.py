"""The only network paths pigeon has: the Fashion-MNIST download and hub weights (`--weights timm`, `hf-hub:`).

Each is exercised end to end against an HTTP server on 127.0.0.1 (PIGEON_FASHION_MNIST_URL and HF_ENDPOINT
point at it), is shown not to be reached when nothing asked for it, and is refused without a single connection
under PIGEON_OFFLINE=1 (and HF_HUB_OFFLINE=1 for the hub). The server counts connections, not just requests,
so even the hub's reachability probe would show.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from loopback import CountingServer
from safetensors.torch import save

import pigeon
from pigeon.data import builtins
from pigeon.errors import CheckpointError, DatasetError
from pigeon.models import create_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LoopbackServer(CountingServer):
    """Serves `files` ({url path: bytes}) on 127.0.0.1, as a plain file server or as the Hugging Face hub's
    resolve endpoint (HEAD with the commit, ETag and size headers huggingface_hub asks for, then GET)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests = files, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                owner.requests.append(f"{self.command} {self.path}")
                path = self.path.split("?")[0]
                blob = owner.files.get(path)
                if blob is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.send_header("ETag", f'"{hashlib.sha256(blob).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    self.wfile.write(blob)

            def do_GET(self) -> None:  # noqa: N802 - the standard library's naming
                self._answer(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

        super().__init__(Handler)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")
    for var in ("PIGEON_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


# -- Fashion-MNIST ------------------------------------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fashion_server(monkeypatch: pytest.MonkeyPatch, no_proxy: None, tmp_path: Path) -> Iterator[LoopbackServer]:
    """A tiny stand-in for Fashion-MNIST (same file names, checksums patched to match) served on 127.0.0.1, with
    PIGEON_FASHION_MNIST_URL pointing at it and no local copy anywhere pigeon looks."""
    rng = np.random.default_rng(0)
    raw = {"train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (40, 28, 28))),
           "train-labels-idx1-ubyte.gz": _idx(np.arange(40) % 10),
           "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 28, 28))),
           "t10k-labels-idx1-ubyte.gz": _idx(np.arange(20) % 10)}
    assert list(raw) == list(builtins.FASHION_FILES)
    monkeypatch.setattr(builtins, "FASHION_FILES", {n: hashlib.sha256(d).hexdigest() for n, d in raw.items()})
    monkeypatch.setattr(builtins, "SYSTEM_DIRS", ())
    monkeypatch.delenv("PIGEON_FASHION_MNIST", raising=False)
    server = LoopbackServer({f"/mirror/{n}": gzip.compress(d, mtime=0) for n, d in raw.items()})
    monkeypatch.setenv("PIGEON_FASHION_MNIST_URL", server.url + "/mirror/")
    yield server
    server.close()


def test_fashion_mnist_is_downloaded_from_the_mirror_in_the_environment(fashion_server: LoopbackServer,
                                                                       tmp_path: Path) -> None:
    run = pigeon.train("fashion-mnist", epochs=1, batch=16, plots=False, verbose=False, device="cpu", amp="off",
                       project=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    assert sorted(fashion_server.requests) == sorted(f"GET /mirror/{n}" for n in builtins.FASHION_FILES)
    assert run.test is not None and run.test["n"] == 20  # the served test split, not the real one
    fashion_server.requests.clear()
    pigeon.val(run.best, "fashion-mnist", cache_dir=str(tmp_path / "cache"), project=str(tmp_path / "val"),
               plots=False, device="cpu")
    assert fashion_server.requests == []  # verified copies in the cache are used from then on


def test_fashion_mnist_under_pigeon_offline_is_refused_without_a_connection(
        fashion_server: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"--data fashion-mnist: the dataset is not on this machine and "
                                           r"PIGEON_OFFLINE=1 forbids downloading it.*apt-get install "
                                           r"dataset-fashion-mnist.*PIGEON_FASHION_MNIST"):
        pigeon.train("fashion-mnist", epochs=1, verbose=False, device="cpu", project=str(tmp_path / "runs"),
                     cache_dir=str(tmp_path / "cache"))
    assert fashion_server.connections == 0


def test_cli_names_the_option_under_pigeon_offline(fashion_server: LoopbackServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from pigeon.cli import main

    monkeypatch.setenv("PIGEON_OFFLINE", "1")
    assert main(["train", "--data", "fashion-mnist", "--project", str(tmp_path / "runs"), "--no-verbose"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("DatasetError: --data fashion-mnist:") and "PIGEON_OFFLINE=1" in err
    assert fashion_server.connections == 0


# -- hub weights ---------------------------------------------------------------------------------------------------

def _safetensors(model: torch.nn.Module) -> bytes:
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, no_proxy: None, tmp_path: Path) -> Iterator[LoopbackServer]:
    """A fake Hugging Face hub on 127.0.0.1 (HF_ENDPOINT) with timm's test_resnet and an org/repo, and an empty
    hub cache."""
    import timm.models

    hub_id = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    files = {f"/{hub_id}/resolve/main/model.safetensors":
             _safetensors(create_model("timm:test_resnet", num_classes=1000, in_chans=3, imgsz=32)),
             "/org/repo/resolve/main/model.safetensors":
             _safetensors(create_model("pigeon-n", num_classes=5, in_chans=1, imgsz=16))}
    # huggingface_hub fixes its offline mode when first imported; a test before this one may have imported it
    # under HF_HUB_OFFLINE=1 (pigeon itself reads the variable when the weights are asked for)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = LoopbackServer(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.close()


def _train(data: Path, tmp_path: Path, **options: object) -> pigeon.api.TrainResult:  # type: ignore[name-defined]
    return pigeon.train(str(data), epochs=1, batch=16, imgsz=16, plots=False, verbose=False, device="cpu", amp="off",
                        project=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), **options)


@pytest.mark.parametrize("model, weights", [("timm:test_resnet", "timm"), ("pigeon-n", "hf-hub:org/repo")])
def test_hub_weights_are_downloaded_from_hf_endpoint_once(hub: LoopbackServer, digits_folder, tmp_path: Path,
                                                          model: str, weights: str) -> None:
    data = digits_folder(per_class=6, size=16)
    run = _train(data, tmp_path, model=model, weights=weights)
    gets = [r for r in hub.requests if r.startswith("GET ")]
    assert len(gets) == 1 and gets[0].endswith("/resolve/main/model.safetensors"), hub.requests
    meta = pigeon.load(run.best, device="cpu").meta
    assert weights.split(":")[0] in meta["pretrained"]["source"]
    hub.requests.clear()
    hub.connections = 0
    _train(data, tmp_path, model=model, weights=weights, name="again")
    assert hub.requests == [] and hub.connections == 0  # the cached file; no new contact


@pytest.mark.parametrize("variable", ["PIGEON_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("model, weights", [("timm:test_resnet", "timm"), ("pigeon-n", "hf-hub:org/repo")])
def test_hub_weights_offline_are_refused_without_a_connection(hub: LoopbackServer, digits_folder, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, variable: str,
                                                              model: str, weights: str) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(CheckpointError, match=rf"^--weights {weights}: hf-hub:\S+ is not in the local "
                                              rf"(Hugging Face )?cache and {variable}.*--weights"):
        _train(digits_folder(per_class=6, size=16), tmp_path, model=model, weights=weights)
    assert hub.connections == 0


def test_nothing_is_fetched_when_nothing_asked_for_it(hub: LoopbackServer, fashion_server: LoopbackServer,
                                                      digits_folder, tmp_path: Path) -> None:
    """With both mirrors configured, training on a folder, from scratch and from a local weights file, and
    predicting contact neither."""
    data = digits_folder(per_class=6, size=16)
    first = _train(data, tmp_path)
    _train(data, tmp_path, weights=str(first.best), name="tuned")
    _train(data, tmp_path, model="timm:test_resnet", name="timm-scratch")
    pigeon.predict(first.best, str(data))
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", buf)
        assert pigeon.cli.main(["models", "--filter", "resnet1*"]) == 0
    assert (hub.connections, fashion_server.connections) == (0, 0)
