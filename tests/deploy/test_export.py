"""pigeon.export: the parity check on real images, INT8, atomic writes (a failed export leaves nothing behind),
and every refusal: bad options, missing packages, foreign checkpoints, missing data, a layout-changing size."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from digits_exports import CHECK_IMAGES, FORMATS
from safetensors.torch import save_file
from torch import nn

import pigeon
from pigeon.deploy import ExportResult, exporter, read_contract
from pigeon.engine.checkpoint import read
from pigeon.engine.predict import Classifier
from pigeon.errors import CheckpointError, ConfigError, ExportError


@pytest.fixture
def ckpt(digits_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared digits checkpoint (pigeon-p at 8 px, 10 classes), alone in its folder, so
    exports written beside it never touch the shared run."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("best.safetensors", "best.meta.json"):
        shutil.copy2(digits_run / "weights" / name, folder / name)
    return folder / "best.safetensors"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root (hidden ones included), with a digest of each file's bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


class _Rolled(nn.Module):
    """Wraps an export so that every image's scores move to the next class: it disagrees with PyTorch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).roll(1, dims=1)


def make_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity check loads the staged export with load_runtime; make what it loads disagree."""
    real = exporter.load_runtime

    def load_runtime(path, threads=None):  # type: ignore[no-untyped-def]
        module, meta = real(path, threads)
        return _Rolled(module), meta

    monkeypatch.setattr(exporter, "load_runtime", load_runtime)


@pytest.fixture
def disagreeing(monkeypatch: pytest.MonkeyPatch) -> None:
    make_disagree(monkeypatch)


# -- the parity check ---------------------------------------------------------------------------------------------

def test_parity_report_on_the_training_data(digits_weights: Path, digits_exports: dict[str, ExportResult]) -> None:
    result = digits_exports["onnx"]  # exported once per session, with check_images=CHECK_IMAGES
    assert result.path == digits_weights.with_name("best.onnx") and result.path.is_file()
    parity = result.parity
    assert parity is not None and parity == result.contract["parity"]
    assert set(parity) == {"images", "top1_agreement", "max_abs_prob_diff", "torch_top1", "export_top1"}
    assert parity["images"] == CHECK_IMAGES < 450  # check_images of digits' 450 test images
    assert parity["top1_agreement"] >= 0.995
    assert 0.0 <= parity["max_abs_prob_diff"] < 1e-4  # fp32 against fp32
    assert 0.5 < parity["torch_top1"] <= 1.0  # a trained model, on real digits
    assert abs(parity["export_top1"] - parity["torch_top1"]) <= 0.01
    assert read_contract(result.path)["parity"] == parity  # the report travels inside the file


def test_parity_on_given_data_maps_classes_by_name(ckpt: Path, clf: Classifier, digits_folder) -> None:
    """data= with a subset of the classes ("1", "3", "4" only): labels are mapped to the model's indices by name,
    so the reported accuracy is exactly the checkpoint's accuracy on those images."""
    folder = digits_folder(splits=None, classes=tuple("01234"), per_class=6, size=8)
    for name in ("0", "2"):
        shutil.rmtree(folder / name)
    result = pigeon.export(ckpt, data=str(folder), verbose=False)
    preds = clf.predict(folder)
    expected = sum(p.label == Path(p.source).parent.name for p in preds) / len(preds)
    assert result.parity is not None
    assert result.parity["images"] == len(preds) == 18
    assert result.parity["torch_top1"] == pytest.approx(expected)
    assert result.parity["export_top1"] == pytest.approx(expected)
    assert result.parity["top1_agreement"] == 1.0


def test_parity_data_with_foreign_classes_is_refused(ckpt: Path, digits_folder) -> None:
    folder = digits_folder(splits=None, classes=("0", "1", "cat"), per_class=2, size=8)
    before = snapshot(ckpt.parent)
    with pytest.raises(ExportError, match=r"classes \['cat'\] are not the model's"):
        pigeon.export(ckpt, data=str(folder), verbose=False)
    assert snapshot(ckpt.parent) == before


# -- INT8 ---------------------------------------------------------------------------------------------------------

def test_int8_is_smaller_and_reports_its_drop(digits_weights: Path, digits_exports: dict[str, ExportResult]) -> None:
    fp32, int8 = digits_exports["onnx"], digits_exports["onnx-int8"]  # int8: calib_images 64, int8_max_drop 0.05
    assert int8.path == digits_weights.with_name("best_int8.onnx")
    assert fp32.path == digits_weights.with_name("best.onnx")
    assert int8.path.stat().st_size < 0.6 * fp32.path.stat().st_size
    contract = read_contract(int8.path)
    assert contract["precision"] == "int8" and read_contract(fp32.path)["precision"] == "fp32"
    assert contract["input"]["shape"][0] == "batch"  # INT8 graphs are always batch-dynamic
    parity = int8.parity
    assert parity is not None and contract["parity"] == parity
    assert parity["top1_drop"] == pytest.approx(parity["torch_top1"] - parity["export_top1"])
    assert parity["top1_drop"] <= 0.05
    assert parity["top1_agreement"] >= 0.9
    assert parity["max_abs_prob_diff"] > 0  # quantized: not bit-identical to fp32


def _int8_weight_peak(path: Path) -> int:
    """The largest |q - zero point| among the 8-bit weights that feed a Conv or Gemm."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i).astype(np.int64) for i in graph.initializer
             if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    feeds = {name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") for name in n.input}
    peaks = []
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in feeds and n.input[0] in inits:
            w, zp = inits[n.input[0]], inits.get(n.input[2], np.zeros(1, np.int64)) if len(n.input) > 2 else 0
            zp = np.asarray(zp).reshape(-1, *([1] * (w.ndim - 1))) if np.ndim(zp) else zp
            peaks.append(int(np.abs(w - zp).max()))
    assert len(peaks) >= 5  # every conv and the head are quantized
    return max(peaks)


def test_default_int8_cannot_saturate_on_a_cpu_without_vnni(ckpt: Path, tmp_path: Path,
                                                            digits_exports: dict[str, ExportResult]) -> None:
    """Without VNNI, onnxruntime's U8S8 kernel adds two uint8 x int8 products in a signed 16-bit register:
    7-bit weights keep the worst pair, 2 x 255 x 64 = 32,640, under 32,768 wherever the file runs."""
    default = digits_exports["onnx-int8"]  # the session's INT8 export, with the default scheme
    assert "int8_scheme" not in FORMATS["onnx-int8"]
    q = default.contract["quantization"]
    assert q["scheme"] == "u8s8-7bit" and q["reduce_range"] and q["saturation_free_without_vnni"]
    assert read_contract(default.path)["quantization"] == q
    assert 2 * 255 * _int8_weight_peak(default.path) <= 32767
    full = pigeon.export(ckpt, int8=True, int8_scheme="u8s8", calib_images=32, check_images=64, int8_max_drop=0.2,
                         out=str(tmp_path / "full.onnx"), verbose=False)
    assert _int8_weight_peak(full.path) == 127  # what can overflow: so it is never the default
    assert full.contract["quantization"]["saturation_free_without_vnni"] is False


def test_int8_checks_even_with_no_check(ckpt: Path, tmp_path: Path, disagreeing: None) -> None:
    """INT8 is always measured against fp32 (it is the point of calibrating); a large drop is refused."""
    before = snapshot(tmp_path)
    with pytest.raises(ExportError, match=r"INT8 loses .* more than --int8-max-drop"):
        pigeon.export(ckpt, int8=True, check=False, calib_images=32, int8_max_drop=0.05, verbose=False)
    assert snapshot(tmp_path) == before


# -- atomic writes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_failed_export_leaves_nothing(ckpt: Path, fmt: str, disagreeing: None) -> None:
    before = snapshot(ckpt.parent)
    with pytest.raises(ExportError, match=rf"the {fmt} export agrees with PyTorch on only 0\.00% .* nothing was"):
        pigeon.export(ckpt, format=fmt, check_images=50, verbose=False)
    assert snapshot(ckpt.parent) == before  # no export, no contract beside it, no temporary folder


def test_failed_reexport_keeps_the_good_onnx(ckpt: Path, monkeypatch: pytest.MonkeyPatch,
                                             digits_exports: dict[str, ExportResult]) -> None:
    good = ckpt.with_name("best.onnx")  # a good export of these weights (the session's), already in place
    shutil.copy2(digits_exports["onnx"].path, good)
    before = snapshot(ckpt.parent)
    make_disagree(monkeypatch)
    with pytest.raises(ExportError):
        pigeon.export(ckpt, check_images=50, verbose=False)
    assert snapshot(ckpt.parent) == before
    assert pigeon.load(good).meta["contract"]["parity"]["images"] == CHECK_IMAGES  # still loads, still the old one


def test_openvino_folder_is_replaced_whole_or_not_at_all(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pigeon.export(ckpt, format="openvino", check_images=30, verbose=False)
    assert first.path == ckpt.with_name("best_openvino")
    assert sorted(p.name for p in first.path.iterdir()) == ["best.bin", "best.xml", "pigeon.json"]
    before = snapshot(ckpt.parent)

    with monkeypatch.context() as patch:
        make_disagree(patch)
        with pytest.raises(ExportError):
            pigeon.export(ckpt, format="openvino", check_images=40, verbose=False)
    assert snapshot(ckpt.parent) == before

    second = pigeon.export(ckpt, format="openvino", check_images=40, verbose=False)
    assert second.path == first.path
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.meta.json", "best.safetensors", "best_openvino"]
    assert read_contract(second.path)["parity"]["images"] == 40  # the new export, with no ".old" left over


# -- refusals -----------------------------------------------------------------------------------------------------

def test_unknown_format(ckpt: Path) -> None:
    with pytest.raises(ConfigError, match="format='tflite'"):
        pigeon.export(ckpt, format="tflite", verbose=False)


def test_int8_needs_onnx(ckpt: Path) -> None:
    for fmt in ("torchscript", "openvino"):
        with pytest.raises(ConfigError, match="int8 is a post-training quantization of the ONNX graph"):
            pigeon.export(ckpt, format=fmt, int8=True, verbose=False)


@pytest.mark.parametrize(("options", "value"), [
    ({"opset": 17}, "opset=17"), ({"min_agreement": 1.5}, "min_agreement=1.5"),
    ({"int8_max_drop": -0.1}, "int8_max_drop=-0.1"), ({"imgsz": 4}, "imgsz=4"), ({"check_images": 0}, "check_images=0"),
])
def test_out_of_range_options(ckpt: Path, options: dict, value: str) -> None:
    with pytest.raises(ConfigError, match=value):
        pigeon.export(ckpt, verbose=False, **options)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.meta.json", "best.safetensors"]


@pytest.mark.parametrize(("fmt", "package"), [("openvino", "openvino"), ("onnx", "onnxruntime"), ("onnx", "onnx")])
def test_missing_package_names_the_extra(ckpt: Path, monkeypatch: pytest.MonkeyPatch, fmt: str,
                                         package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails as if it were not installed
    with pytest.raises(ConfigError, match=rf"this needs {package}: pip install 'pigeon\[export\]'"):
        pigeon.export(ckpt, format=fmt, verbose=False)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.meta.json", "best.safetensors"]


def test_foreign_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="has no pigeon metadata"):
        pigeon.export(path, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.safetensors"]


@pytest.mark.parametrize("name", ["model.pt", "model.onnx", "model.ckpt"])
def test_only_checkpoints_are_exported(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"never read")
    with pytest.raises(CheckpointError, match=r"export reads a pigeon checkpoint \(\.safetensors"):
        pigeon.export(tmp_path / name, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        pigeon.export(tmp_path / "best.safetensors", verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_a_size_that_changes_the_layout_is_refused(ckpt: Path) -> None:
    """pigeon-p trained at 8 px: at 16 px and above it pools first, a different set of layers."""
    with pytest.raises(ExportError, match="pigeon-p changes its layout between 8 and 16 px"):
        pigeon.export(ckpt, imgsz=16, verbose=False)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.meta.json", "best.safetensors"]


def test_another_size_with_the_same_layout(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exports" / "deep" / "m12.onnx"  # missing folders are created
    result = pigeon.export(ckpt, imgsz=12, out=str(out), check_images=20, dynamic_batch=True)
    assert result.path == out and out.is_file()
    text = capsys.readouterr().out  # verbose: the parity report, then the file written
    assert "parity on 20 real images: top-1 agreement 100.00%" in text
    assert f"exported {ckpt} -> {out}" in text and "input ['batch', 1, 12, 12]" in text
    contract = read_contract(result.path)
    _, meta = read(ckpt)
    assert contract["preprocess"] == {**meta["preprocess"], "imgsz": 12}
    assert contract["input"]["shape"] == ["batch", 1, 12, 12]
    assert result.parity is not None and result.parity["top1_agreement"] == 1.0
    clf = pigeon.load(result.path)
    noise = np.random.default_rng(0).integers(0, 256, (3, 1, 12, 12), dtype=np.uint8)
    assert clf.preprocess.imgsz == 12 and clf.probabilities(noise).shape == (3, 10)


def test_missing_training_data(digits_folder, tmp_path: Path) -> None:
    """A checkpoint trained on a folder that is gone: the check needs --data, or --no-check."""
    train_dir = digits_folder(tmp_path / "gone", splits=None, per_class=4, size=8)
    run = pigeon.train(str(train_dir), model="pigeon-n", epochs=1, imgsz=8, batch=16, amp="off", device="cpu",
                       plots=False, verbose=False, project=str(tmp_path / "runs"), name="r")
    best = Path(run.best)
    shutil.rmtree(train_dir)
    before = snapshot(best.parent)
    with pytest.raises(ExportError, match="could not read") as info:
        pigeon.export(best, verbose=False)
    assert "--data" in str(info.value) and "--no-check" in str(info.value)
    with pytest.raises(ExportError, match="--data"):  # INT8 is always measured: no_check does not skip that
        pigeon.export(best, int8=True, check=False, verbose=False)
    assert snapshot(best.parent) == before

    elsewhere = digits_folder(tmp_path / "elsewhere", splits=None, per_class=3, size=8)
    checked = pigeon.export(best, data=str(elsewhere), verbose=False)
    assert checked.parity is not None and checked.parity["images"] == 9
    unchecked = pigeon.export(best, format="torchscript", check=False, verbose=False)
    assert unchecked.parity is None and "parity" not in read_contract(unchecked.path)
    assert sorted(p.name for p in best.parent.iterdir()) == sorted([*before, "best.onnx", "best.torchscript",
                                                                    "best.torchscript.json"])


def test_an_export_its_runtime_cannot_load_is_refused_even_unchecked(ckpt: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user sees when onnxruntime is too old for the opset: an error naming --opset, and no file."""
    def load_runtime(path, threads=None):  # type: ignore[no-untyped-def]
        raise CheckpointError(f"{path}: onnxruntime cannot load it (Opset 99 is under development)")

    monkeypatch.setattr(exporter, "load_runtime", load_runtime)
    before = snapshot(ckpt.parent)
    with pytest.raises(ExportError, match=r"runtime cannot load it \(written with opset 18: try another --opset\)"):
        pigeon.export(ckpt, "onnx", check=False, verbose=False)
    assert snapshot(ckpt.parent) == before


def test_a_height_x_width_model_exports_with_that_input_shape(wide_folder, tmp_path: Path, cache_dir: Path) -> None:
    data = wide_folder(size=(20, 40))
    run = pigeon.train(str(data), model="pigeon-p", imgsz="16x32", epochs=1, batch=4, fliplr=0.0, val_fraction=0.0,
                       plots=False, verbose=False, device="cpu", amp="off", project=str(tmp_path / "runs"),
                       cache_dir=str(cache_dir))
    result = pigeon.export(run.best, cache_dir=str(cache_dir), verbose=False)  # ONNX, checked on the 8 images
    assert result.parity is not None and result.parity["top1_agreement"] == 1.0 and result.parity["images"] == 8
    contract = read_contract(result.path)
    assert contract["input"]["shape"] == [1, 1, 16, 32] and contract["preprocess"]["imgsz"] == [16, 32]
    exported, checkpoint = pigeon.load(result.path), pigeon.load(run.best, device="cpu")
    assert exported.preprocess.hw == (16, 32)
    files = sorted(str(p) for p in data.rglob("*.png"))
    np.testing.assert_allclose(np.stack([p.probs for p in exported.predict(files)]),
                               np.stack([p.probs for p in checkpoint.predict(files)]), atol=1e-4)
    # TorchScript at another box with the same layout: the graph takes [N, 1, 24, 48]
    bigger = pigeon.export(run.best, format="torchscript", imgsz="24x48", out=str(tmp_path / "m.torchscript"),
                           check=False, verbose=False)
    assert read_contract(bigger.path)["input"]["shape"] == [1, 1, 24, 48]
    assert pigeon.load(bigger.path).probabilities(np.zeros((1, 1, 24, 48), np.uint8)).shape == (1, 2)


def test_a_16_bit_four_band_model_exports_with_its_bands_and_scale(raster_folder, tmp_path: Path,
                                                                   cache_dir: Path) -> None:
    root = raster_folder()
    run = pigeon.train(str(root), model="pigeon-p", imgsz=12, epochs=1, batch=4, val_fraction=0.0, plots=False,
                       verbose=False, device="cpu", amp="off", project=str(tmp_path / "runs"),
                       cache_dir=str(cache_dir))
    result = pigeon.export(run.best, cache_dir=str(cache_dir), verbose=False)
    assert result.parity is not None and result.parity["top1_agreement"] == 1.0
    contract = read_contract(result.path)
    assert contract["input"]["shape"] == [1, 4, 12, 12]
    assert contract["preprocess"]["dtype"] == "uint16" and len(contract["preprocess"]["mean"]) == 4
    assert contract["input"]["normalize"].startswith("(pixel / 65535 - mean) / std per channel, pixel in 0..65535")
    assert contract["input"]["color_order"] == "4 bands, in the order the training files store them"
    files = sorted(str(p) for p in root.rglob("*.*"))
    np.testing.assert_allclose(np.stack([p.probs for p in pigeon.load(result.path).predict(files)]),
                               np.stack([p.probs for p in pigeon.load(run.best, device="cpu").predict(files)]),
                               atol=1e-4)


def test_exports_in_one_process_share_one_translation_table_and_write_the_same_bytes(tmp_path: Path) -> None:
    from torch.onnx._internal.exporter import _registration

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    example = torch.zeros(1, 1, 4, 4)
    exporter._write_onnx(model, example, tmp_path / "a.onnx", 18, dynamic=False)
    tables = dict(exporter._ONNX_REGISTRIES)
    exporter._write_onnx(model, example, tmp_path / "b.onnx", 18, dynamic=False)
    assert tables and exporter._ONNX_REGISTRIES == tables  # built once, then reused
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    # torch's own method is back in place for anyone else who exports in this process
    assert isinstance(_registration.ONNXRegistry.__dict__["from_torchlib"], classmethod)
