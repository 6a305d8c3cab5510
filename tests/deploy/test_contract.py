"""The export contract: what it records (classes, preprocessing, input, output, source), where each format keeps
it (ONNX metadata, a TorchScript archive entry, a JSON file in an OpenVINO folder), and refusing damaged ones.

These tests build the files by hand (a one-node ONNX graph, a zip archive), so they run no exporter."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

import pigeon
from pigeon.deploy import read_contract
from pigeon.deploy.contract import FORMAT, METADATA_KEY, make_contract, sidecar
from pigeon.deploy.exporter import _set_onnx_metadata
from pigeon.engine.checkpoint import read
from pigeon.errors import CheckpointError


@pytest.fixture(scope="module")
def meta(digits_run: Path) -> dict[str, Any]:
    """The shared digits checkpoint's metadata (pigeon-p, 10 classes, 8 px grayscale)."""
    return read(digits_run / "weights" / "best.safetensors")[1]


def identity_onnx(path: Path) -> Path:
    """A valid one-node ONNX graph with no pigeon metadata."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def with_props(path: Path, props: dict[str, str]) -> Path:
    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


# -- what the contract says ---------------------------------------------------------------------------------------

def test_contract_records_everything_needed(meta: dict[str, Any]) -> None:
    contract = make_contract(meta, "onnx", "fp32", 8, False, "w/best.safetensors")
    assert (contract["format"], contract["format_version"]) == (FORMAT, 1) == ("pigeon-export", 1)
    assert (contract["runtime"], contract["precision"], contract["model"]) == ("onnx", "fp32", "pigeon-p")
    assert contract["classes"] == meta["classes"] == list("0123456789")
    assert contract["preprocess"] == meta["preprocess"]
    assert set(contract["preprocess"]) == {"imgsz", "channels", "resize", "mean", "std"}
    assert contract["input"]["name"] == "images" and contract["input"]["dtype"] == "float32"
    assert contract["input"]["layout"] == "NCHW" and contract["input"]["shape"] == [1, 1, 8, 8]
    assert contract["input"]["color_order"] == "grayscale (L)"
    assert contract["input"]["resize"] == "shorter side to 8, then centre crop 8x8"
    assert "mean" in contract["input"]["normalize"] and "std" in contract["input"]["normalize"]
    assert contract["output"]["name"] == "logits" and contract["output"]["kind"] == "logits"
    assert contract["source"] == {"checkpoint": "w/best.safetensors", "sha256": meta["sha256"]}
    assert contract["versions"]["pigeon"] == pigeon.__version__
    assert "parity" not in contract  # added by the check, after the export ran
    assert json.loads(json.dumps(contract)) == contract  # plain JSON all the way down


def test_contract_follows_size_batch_and_channels(meta: dict[str, Any]) -> None:
    contract = make_contract(meta, "openvino", "fp32", 12, True, "x.safetensors")
    assert contract["input"]["shape"] == ["batch", 1, 12, 12]
    assert contract["preprocess"] == {**meta["preprocess"], "imgsz": 12}
    assert meta["preprocess"]["imgsz"] == 8  # the checkpoint's own metadata is left alone

    rgb = {**meta, "preprocess": {**meta["preprocess"], "channels": 3, "resize": "pad", "mean": [0.5] * 3,
                                  "std": [0.25] * 3}}
    contract = make_contract(rgb, "onnx", "int8", 32, False, "x.safetensors")
    assert contract["input"]["shape"] == [1, 3, 32, 32] and contract["input"]["color_order"] == "RGB"
    assert contract["input"]["resize"] == "longer side to 32, then pad to square"
    assert contract["preprocess"]["mean"] == [0.5] * 3 and contract["precision"] == "int8"
    stretch = {**meta, "preprocess": {**meta["preprocess"], "resize": "stretch"}}
    assert make_contract(stretch, "onnx", "fp32", 8, False, "x")["input"]["resize"] == \
        "resize to 8x8 ignoring aspect ratio"


def test_contract_of_a_height_x_width_input(meta: dict[str, Any]) -> None:
    contract = make_contract(meta, "onnx", "fp32", (16, 32), False, "x.safetensors")
    assert contract["input"]["shape"] == [1, 1, 16, 32]  # N, C, H, W
    assert contract["preprocess"]["imgsz"] == [16, 32]
    assert contract["input"]["resize"] == "scale by max(32 / width, 16 / height) to cover 16x32 (height x width), " \
        "then centre crop to it"
    pad = {**meta, "preprocess": {**meta["preprocess"], "resize": "pad"}}
    assert make_contract(pad, "onnx", "fp32", (16, 32), False, "x")["input"]["resize"].startswith(
        "scale by min(32 / width, 16 / height) to fit inside 16x32")
    assert json.loads(json.dumps(contract)) == contract
    assert pigeon.data.Preprocess.from_dict(contract["preprocess"]).hw == (16, 32)  # what pigeon.load reads


# -- where each format keeps it -----------------------------------------------------------------------------------

def test_onnx_keeps_it_in_metadata(meta: dict[str, Any], tmp_path: Path) -> None:
    path = identity_onnx(tmp_path / "m.onnx")
    contract = make_contract(meta, "onnx", "fp32", 8, False, "x.safetensors")
    _set_onnx_metadata(path, contract)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert set(props) == {METADATA_KEY, "classes"} and METADATA_KEY == "pigeon"
    assert json.loads(props["pigeon"]) == contract
    assert json.loads(props["classes"]) == meta["classes"]  # for tools that only want the names
    assert "pigeon" in model.doc_string
    assert read_contract(path) == contract

    # writing it again (as the parity check does) replaces it, never duplicates it
    updated = {**contract, "parity": {"images": 3, "top1_agreement": 1.0}}
    _set_onnx_metadata(path, updated)
    keys = [p.key for p in onnx.load(str(path)).metadata_props]
    assert sorted(keys) == ["classes", "pigeon"]
    assert read_contract(path) == updated


def test_torchscript_contract_is_read_from_the_archive_without_running_it(meta: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    contract = make_contract(meta, "torchscript", "fp32", 8, False, "x.safetensors")
    path = tmp_path / "m.torchscript"
    with zipfile.ZipFile(path, "w") as archive:  # no program at all: only the entry is read
        archive.writestr("m/extra/pigeon.json", json.dumps(contract))
        archive.writestr("m/data.pkl", b"never unpickled")
    assert read_contract(path) == contract
    assert sidecar(path) == tmp_path / "m.torchscript.json"


def test_folder_keeps_it_in_pigeon_json(meta: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "m_openvino"
    folder.mkdir()
    assert sidecar(folder) == folder / "pigeon.json"
    with pytest.raises(CheckpointError, match="its contract pigeon.json .* is missing"):
        read_contract(folder)
    contract = make_contract(meta, "openvino", "fp32", 8, False, "x.safetensors")
    (folder / "pigeon.json").write_text(json.dumps(contract))
    assert read_contract(folder) == contract


# -- refusals -----------------------------------------------------------------------------------------------------

def test_onnx_without_contract(tmp_path: Path) -> None:
    path = with_props(identity_onnx(tmp_path / "plain.onnx"), {"author": "someone else"})
    with pytest.raises(CheckpointError, match="has no pigeon contract .* not written by `pigeon export`"):
        read_contract(path)


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", json.dumps({"format": "other"}), "null"])
def test_onnx_with_a_damaged_contract(tmp_path: Path, value: str) -> None:
    path = with_props(identity_onnx(tmp_path / "bad.onnx"), {"pigeon": value})
    with pytest.raises(CheckpointError, match="the pigeon contract is damaged"):
        read_contract(path)


def test_unreadable_onnx(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable ONNX file"):
        read_contract(path)


def test_torchscript_archive_refusals(tmp_path: Path) -> None:
    bare = tmp_path / "bare.torchscript"
    with zipfile.ZipFile(bare, "w") as archive:
        archive.writestr("m/data.pkl", b"")
    with pytest.raises(CheckpointError, match="this TorchScript file has no pigeon contract"):
        read_contract(bare)
    junk = tmp_path / "junk.torchscript"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(CheckpointError, match="not a readable TorchScript archive"):
        read_contract(junk)
    damaged = tmp_path / "damaged.torchscript"
    with zipfile.ZipFile(damaged, "w") as archive:
        archive.writestr("m/extra/pigeon.json", "{")
    with pytest.raises(CheckpointError, match="the pigeon contract is damaged"):
        read_contract(damaged)


def test_damaged_pigeon_json(tmp_path: Path) -> None:
    (tmp_path / "pigeon.json").write_text(json.dumps({"format": "pigeon-checkpoint"}))
    with pytest.raises(CheckpointError, match="pigeon.json: the pigeon contract is damaged"):
        read_contract(tmp_path)


def test_read_contract_accepts_a_string(meta: dict[str, Any], tmp_path: Path) -> None:
    path = identity_onnx(tmp_path / "m.onnx")
    contract = make_contract(meta, "onnx", "fp32", 8, False, "x.safetensors")
    _set_onnx_metadata(path, contract)
    assert read_contract(str(path)) == contract


def test_read_contract_accepts_an_openvino_xml(meta: dict[str, Any], tmp_path: Path) -> None:
    contract = make_contract(meta, "openvino", "fp32", 8, False, "x.safetensors")
    (tmp_path / "pigeon.json").write_text(json.dumps(contract))
    (tmp_path / "best.xml").write_text("<net/>")
    assert read_contract(tmp_path / "best.xml") == contract
