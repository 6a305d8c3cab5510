"""Checkpoints are safetensors plus JSON: round trips, digests, damaged files and pickles refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import pigeon
from pigeon.data.preprocess import Preprocess
from pigeon.engine import checkpoint
from pigeon.errors import CheckpointError
from pigeon.models import create_model

CLASSES = ["cat", "dog", "pigeon"]


def _model(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("pigeon-n", num_classes=num_classes, in_chans=1, imgsz=8)
    model.train()(torch.randn(4, 1, 8, 8))  # move the BatchNorm statistics off their defaults
    return model.eval()


def _meta(classes: list[str] = CLASSES) -> dict[str, Any]:
    spec = Preprocess(imgsz=8, channels=1, mean=(0.25,), std=(0.3,))
    return {"model": "pigeon-n", "classes": classes, "preprocess": spec.to_dict(), "epoch": 3}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = _model()
    path = checkpoint.save(tmp_path / "model.safetensors", model, _meta())
    return path, model


def test_round_trip(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    state, meta = checkpoint.read(path)
    expected = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
        assert state[name].dtype == tensor.dtype
    assert meta["format"] == "pigeon-checkpoint" and meta["format_version"] == 1
    assert meta["classes"] == CLASSES
    assert meta["model"] == "pigeon-n" and meta["epoch"] == 3
    assert meta["preprocess"] == {"imgsz": 8, "channels": 1, "resize": "crop", "mean": [0.25], "std": [0.3]}
    assert meta["versions"] == {"pigeon": pigeon.__version__, "torch": torch.__version__,
                                "python": meta["versions"]["python"]}
    assert meta["sha256"] == checkpoint.weights_digest(expected)
    assert len(meta["sha256"]) == 64


def test_sidecar_holds_the_same_metadata(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    sidecar = path.parent / "model.meta.json"
    assert json.loads(sidecar.read_text()) == checkpoint.read(path)[1]


def test_no_temp_files_left(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, model = saved
    checkpoint.save(path, model, _meta())  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.meta.json", "model.safetensors"]


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pigeon.io

    def broken(fd: int) -> None:  # the bytes went out, the disk cannot hold them
        raise OSError("disk full")

    monkeypatch.setattr(pigeon.io.os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path / "model.safetensors", _model(), _meta())
    assert list(tmp_path.iterdir()) == []


def test_load_model_restores_the_network(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    loaded, meta = checkpoint.load_model(path)
    assert not loaded.training
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["classes"] == CLASSES


def _data_region(path: Path, tensor: str) -> tuple[int, int]:
    """Absolute byte range of one tensor's data, from the safetensors header."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    start, end = header[tensor]["data_offsets"]
    return 8 + header_len + start, 8 + header_len + end


def test_tampered_weights_fail_the_digest(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    start, end = _data_region(path, "fc.weight")
    raw = bytearray(path.read_bytes())
    raw[(start + end) // 2] ^= 0x01  # one bit of one weight: a tiny change, but not the saved weights
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the digest"):
        checkpoint.read(path)
    with pytest.raises(CheckpointError, match="do not match the digest"):
        pigeon.load(path, device="cpu")


@pytest.mark.parametrize("keep", [0, 4, 8, 100, 0.5, -1])
def test_truncated_file(saved: tuple[Path, torch.nn.Module], keep: float) -> None:
    path, _ = saved
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep if keep >= 0 else len(raw) + keep
    path.write_bytes(raw[:n])
    with pytest.raises(CheckpointError, match="not a readable safetensors file.*truncated or corrupt"):
        checkpoint.read(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        checkpoint.read(tmp_path / "nope.safetensors")


def test_safetensors_without_pigeon_metadata(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file(dict(_model().state_dict()), str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no pigeon metadata"):
        checkpoint.read(path)
    save_file(dict(_model().state_dict()), str(path))  # no metadata at all
    with pytest.raises(CheckpointError, match="no pigeon metadata"):
        checkpoint.load_model(path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "null"])
def test_damaged_pigeon_metadata(tmp_path: Path, text: str) -> None:
    path = tmp_path / "damaged.safetensors"
    save_file(dict(_model().state_dict()), str(path), metadata={"pigeon": text})
    with pytest.raises(CheckpointError, match="pigeon metadata is not a JSON object"):
        checkpoint.read(path)


def test_metadata_without_classes(tmp_path: Path) -> None:
    path = tmp_path / "partial.safetensors"
    state = dict(_model().state_dict())
    meta = {"model": "pigeon-n", "sha256": checkpoint.weights_digest(state)}
    save_file(state, str(path), metadata={"pigeon": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="metadata lacks classes, preprocess"):
        checkpoint.load_model(path)


def test_metadata_without_digest_is_refused(tmp_path: Path) -> None:
    # Removing the digest must not be a way around the tamper check.
    path = tmp_path / "nodigest.safetensors"
    save_file(dict(_model().state_dict()), str(path), metadata={"pigeon": json.dumps({"model": "pigeon-n"})})
    with pytest.raises(CheckpointError, match="no weights digest"):
        checkpoint.read(path)


def test_wrong_shape_weights(tmp_path: Path) -> None:
    # Ten-class weights whose metadata names three classes: the digest holds, the shapes do not.
    path = checkpoint.save(tmp_path / "model.safetensors", _model(num_classes=10), _meta())
    state, _ = checkpoint.read(path)
    assert state["fc.weight"].shape == (10, 128)
    with pytest.raises(CheckpointError, match=r"do not fit model 'pigeon-n' \(fc.weight \(10, 128\) != \(3, 128\)"):
        checkpoint.load_model(path)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".PT", ".pkl", ".ckpt"])
def test_load_refuses_pickles_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    torch.save(_model().state_dict(), path)

    def forbidden(*args: Any, **kwargs: Any) -> None:
        pytest.fail("torch.load was called on a file the user handed to pigeon.load")

    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(CheckpointError, match=f"a {suffix.lower()} file can hold pickled code"):
        pigeon.load(path)
    with pytest.raises(CheckpointError, match="never loaded here"):
        pigeon.predict(str(path), torch.zeros(8, 8))


def test_pickle_renamed_to_safetensors_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sneaky.safetensors"
    torch.save(_model().state_dict(), path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        pigeon.load(path)
