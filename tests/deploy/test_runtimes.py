"""Exports as models: pigeon.load() on each format predicts like the checkpoint, with fixed or dynamic batch;
pigeon.val() on an export matches the checkpoint; foreign or damaged exports are refused."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from digits_exports import CHECK_IMAGES, FORMATS

import pigeon
from pigeon.deploy import ExportResult, load_runtime, read_contract
from pigeon.engine.checkpoint import read
from pigeon.engine.predict import Classifier
from pigeon.errors import CheckpointError, ConfigError

FP32 = ["onnx", "onnx-dynamic", "torchscript", "openvino"]


@pytest.fixture
def weights(digits_weights: Path) -> Path:
    """The shared digits checkpoint the session's exports were made from, alone with them in its folder."""
    return digits_weights


@pytest.fixture
def exports(digits_exports: dict[str, ExportResult]) -> dict[str, ExportResult]:
    """Every format of FORMATS, exported once per session (tests/conftest.py), each checked on CHECK_IMAGES."""
    return digits_exports


@pytest.fixture
def folder(digits_folder) -> Path:  # type: ignore[no-untyped-def]
    """30 real digits, 3 of each class, at 8 px in the flat layout root/<digit>/NNN.png."""
    return digits_folder(splits=None, classes=tuple("0123456789"), per_class=3, size=8)


def test_default_paths(weights: Path, exports: dict[str, ExportResult]) -> None:
    assert {name: r.path.name for name, r in exports.items()} == {
        "onnx": "best.onnx", "onnx-int8": "best_int8.onnx", "onnx-dynamic": "dynamic.onnx",
        "torchscript": "best.torchscript", "openvino": "best_openvino"}
    assert sorted(p.name for p in weights.parent.iterdir()) == [
        "best.meta.json", "best.onnx", "best.safetensors", "best.torchscript", "best.torchscript.json",
        "best_int8.onnx", "best_openvino", "dynamic.onnx"]  # nothing else: no temporary folder left
    assert sorted(p.name for p in exports["openvino"].path.iterdir()) == ["best.bin", "best.xml", "pigeon.json"]


@pytest.mark.parametrize("name", list(FORMATS))
def test_contract_round_trip(name: str, weights: Path, exports: dict[str, ExportResult]) -> None:
    result = exports[name]
    _, meta = read(weights)
    contract = read_contract(result.path)
    assert contract == result.contract  # what the file carries is what export returned, parity included
    assert contract["classes"] == meta["classes"] == list("0123456789")
    assert contract["preprocess"] == meta["preprocess"]
    assert contract["model"] == meta["model"] == "pigeon-p"
    assert contract["source"] == {"checkpoint": str(weights), "sha256": meta["sha256"]}
    assert contract["precision"] == ("int8" if name == "onnx-int8" else "fp32")
    assert contract.get("quantization", {}).get("scheme") == ("u8s8-7bit" if name == "onnx-int8" else None)
    assert contract["runtime"] == FORMATS[name]["format"]
    assert contract["input"]["name"] == "images" and contract["input"]["layout"] == "NCHW"
    assert contract["input"]["color_order"] == "grayscale (L)"
    assert contract["output"]["kind"] == "logits"
    dynamic = name in ("onnx-int8", "onnx-dynamic")
    assert contract["input"]["shape"] == ["batch" if dynamic else 1, 1, 8, 8]
    parity = result.parity
    assert parity is not None and parity["images"] == CHECK_IMAGES
    assert parity["top1_agreement"] >= (0.95 if name == "onnx-int8" else 0.995)
    clf = pigeon.load(result.path)
    assert clf.meta["contract"] == contract and clf.classes == tuple(meta["classes"])
    assert clf.preprocess.to_dict() == meta["preprocess"]


def test_torchscript_sidecar_is_a_copy_of_the_archived_contract(exports: dict[str, ExportResult]) -> None:
    path = exports["torchscript"].path
    sidecar = path.with_name(path.name + ".json")
    sidecar_contract = json.loads(sidecar.read_text())
    sidecar.unlink()  # the archive alone is enough: it holds the contract as pigeon.json
    try:
        assert read_contract(path) == sidecar_contract == exports["torchscript"].contract
        assert pigeon.load(path).classes == tuple(sidecar_contract["classes"])
    finally:
        sidecar.write_text(json.dumps(sidecar_contract, indent=2))


@pytest.mark.parametrize("name", ["onnx", "onnx-int8", "onnx-dynamic"])
def test_onnx_batch_dimension(name: str, exports: dict[str, ExportResult]) -> None:
    graph = onnx.load(str(exports[name].path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    if name == "onnx":
        assert not dims[0].dim_param and dims[0].dim_value == 1
    else:
        assert dims[0].dim_param  # symbolic: any batch size
    module, _ = load_runtime(exports[name].path)
    assert module.fixed_batch == (1 if name == "onnx" else None)


@pytest.mark.parametrize("name", FP32)
def test_fp32_export_predicts_like_the_checkpoint(name: str, exports: dict[str, ExportResult], clf: Classifier,
                                                  folder: Path) -> None:
    exported = pigeon.load(exports[name].path)
    assert exported.device == torch.device("cpu") and exported.amp is None
    ours, theirs = exported.predict(folder, top_k=3), clf.predict(folder, top_k=3)
    assert len(ours) == len(theirs) == 30
    assert [p.source for p in ours] == [p.source for p in theirs]
    assert [p.label for p in ours] == [p.label for p in theirs]
    assert [p.top5 for p in ours] == [p.top5 for p in theirs]
    np.testing.assert_allclose(np.stack([p.probs for p in ours]), np.stack([p.probs for p in theirs]), atol=1e-5)
    # a trained model on real digits: most labels are the folder's digit
    assert sum(p.label == Path(p.source).parent.name for p in ours) >= 24


def test_int8_export_mostly_agrees(exports: dict[str, ExportResult], clf: Classifier, folder: Path) -> None:
    ours, theirs = pigeon.load(exports["onnx-int8"].path).predict(folder), clf.predict(folder)
    agree = np.mean([a.label == b.label for a, b in zip(ours, theirs)])
    assert agree >= 0.9
    np.testing.assert_allclose(np.stack([p.probs for p in ours]), np.stack([p.probs for p in theirs]), atol=0.1)


@pytest.mark.parametrize("name", ["onnx", "torchscript", "openvino"])
def test_fixed_batch_export_takes_a_batch(name: str, exports: dict[str, ExportResult], clf: Classifier,
                                          digits_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images = digits_arrays[0][:7, None]  # seven real 8x8 digits, uint8 [7, 1, 8, 8]
    probs = pigeon.load(exports[name].path).probabilities(images)
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs, clf.probabilities(images), atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_openvino_xml_loads_like_its_folder(exports: dict[str, ExportResult], folder: Path) -> None:
    path = exports["openvino"].path
    by_xml, by_folder = pigeon.load(path / "best.xml"), pigeon.load(path)
    assert [p.label for p in by_xml.predict(folder)] == [p.label for p in by_folder.predict(folder)]
    assert by_xml.meta["contract"] == by_folder.meta["contract"]


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_val_on_an_export_matches_the_checkpoint(name: str, exports: dict[str, ExportResult], clf: Classifier,
                                                 tmp_path: Path) -> None:
    ref = pigeon.val(clf, "digits", project=None, verbose=False)
    got = pigeon.val(exports[name].path, "digits", project=str(tmp_path), name="v", plots=False, verbose=False)
    assert got["split"] == ref["split"] == "test"
    assert abs(got["top1"] - ref["top1"]) <= 0.02
    assert np.abs(np.asarray(got["confusion"]) - np.asarray(ref["confusion"])).sum() <= 2 * 0.02 * 450
    assert json.loads((tmp_path / "v" / "report.json").read_text())["top1"] == got["top1"]


def test_predict_api_accepts_an_export_path(exports: dict[str, ExportResult], clf: Classifier, folder: Path) -> None:
    preds = pigeon.predict(exports["onnx"].path, folder, top_k=1)
    assert isinstance(preds, list) and [p.label for p in preds] == [p.label for p in clf.predict(folder)]
    one = pigeon.predict(str(exports["torchscript"].path), next(folder.rglob("*.png")))
    assert not isinstance(one, list) and one.ok


# -- refusals -----------------------------------------------------------------------------------------------------

def test_onnx_without_contract_is_refused(exports: dict[str, ExportResult], tmp_path: Path) -> None:
    model = onnx.load(str(exports["onnx"].path))
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(CheckpointError, match="this ONNX file has no pigeon contract"):
        pigeon.load(plain)
    with pytest.raises(CheckpointError, match="this ONNX file has no pigeon contract"):
        read_contract(plain)


def test_damaged_onnx_contract_is_refused(exports: dict[str, ExportResult], tmp_path: Path) -> None:
    model = onnx.load(str(exports["onnx"].path))
    next(p for p in model.metadata_props if p.key == "pigeon").value = "{not json"
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    with pytest.raises(CheckpointError, match="the pigeon contract is damaged"):
        pigeon.load(damaged)


def test_unreadable_onnx_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx graph" * 10)
    with pytest.raises(CheckpointError, match=str(junk)):
        pigeon.load(junk)


def test_torchscript_without_contract_is_refused(exports: dict[str, ExportResult], tmp_path: Path) -> None:
    path = tmp_path / "plain.torchscript"  # the same archive without its extra file pigeon.json
    with zipfile.ZipFile(exports["torchscript"].path) as src, zipfile.ZipFile(path, "w") as dst:
        kept = [n for n in src.namelist() if not n.endswith("/extra/pigeon.json")]
        assert len(kept) == len(src.namelist()) - 1
        for entry in kept:
            dst.writestr(src.getinfo(entry), src.read(entry))
    with pytest.raises(CheckpointError, match="this TorchScript file has no pigeon contract"):
        pigeon.load(path)
    junk = tmp_path / "junk.torchscript"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable TorchScript archive"):
        pigeon.load(junk)


def test_openvino_folder_without_contract_is_refused(exports: dict[str, ExportResult], tmp_path: Path) -> None:
    copy = tmp_path / "ov"
    shutil.copytree(exports["openvino"].path, copy)
    (copy / "pigeon.json").unlink()
    with pytest.raises(CheckpointError, match="its contract pigeon.json"):
        pigeon.load(copy)
    with pytest.raises(CheckpointError, match="its contract pigeon.json"):
        pigeon.load(copy / "best.xml")
    shutil.copy2(copy / "best.xml", copy / "other.xml")
    with pytest.raises(CheckpointError, match="expected one OpenVINO .xml model in this folder, found 2"):
        pigeon.load(copy)


def test_missing_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file or folder"):
        pigeon.load(tmp_path / "gone.onnx")


@pytest.mark.parametrize(("name", "package"), [("openvino", "openvino"), ("onnx", "onnxruntime")])
def test_loading_without_the_runtime_names_the_extra(name: str, package: str, exports: dict[str, ExportResult],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ConfigError, match=rf"this needs {package}: pip install 'pigeon\[export\]'"):
        pigeon.load(exports[name].path)
