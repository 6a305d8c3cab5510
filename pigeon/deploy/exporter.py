"""`pigeon export`: write a checkpoint as ONNX (fp32 or INT8), TorchScript or OpenVINO IR, and prove it agrees.

Every export is written under a temporary name, loaded back by its own runtime, compared with PyTorch on
real images, and only then renamed into place with its contract. A failed step leaves no file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pigeon.calibration import temperature_of
from pigeon.config import ExportConfig, Size, as_size, size_hw, size_text
from pigeon.data.dataset import to_model_labels
from pigeon.deploy.contract import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    TORCHSCRIPT_ENTRY,
    make_contract,
    sidecar,
)
from pigeon.deploy.runtimes import load_runtime, need
from pigeon.errors import CheckpointError, ConfigError, DatasetError, ExportError
from pigeon.io import make_temp_dir


@dataclass(frozen=True)
class ExportResult:
    path: Path
    contract: dict[str, Any]

    @property
    def parity(self) -> dict[str, Any] | None:
        return self.contract.get("parity")


class Tempered(nn.Module):
    """The model with its calibration temperature inside the graph: any runtime's softmax of these logits is
    the calibrated probability, with no pigeon code to apply it. Dividing keeps the order, so top-1 is
    unchanged."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inverse_temperature", torch.tensor(1.0 / temperature), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.inverse_temperature


def default_path(checkpoint: Path, fmt: str, int8: bool) -> Path:
    stem = checkpoint.with_suffix("").name + ("_int8" if int8 else "")
    return checkpoint.with_name({"onnx": f"{stem}.onnx", "torchscript": f"{stem}.torchscript",
                                 "openvino": f"{stem}_openvino"}[fmt])


def export(cfg: ExportConfig) -> ExportResult:
    from pigeon.engine import checkpoint

    say = print if cfg.verbose else (lambda *a, **k: None)
    source = Path(cfg.model)
    if source.suffix != ".safetensors":
        raise CheckpointError(f"{source}: export reads a pigeon checkpoint (.safetensors written by `pigeon train`); "
                              "give runs/train/<name>/weights/best.safetensors")
    for package in {"onnx": ("onnx", "onnxscript", "onnxruntime"), "openvino": ("openvino",)}.get(cfg.format, ()):
        need(package)  # before any work: a missing package is named with its install line
    model, meta = checkpoint.load_model(source)
    imgsz = cfg.imgsz or as_size(meta["preprocess"]["imgsz"])
    model = at_size(model, meta, imgsz).float().eval()
    temperature = temperature_of(meta)
    if temperature != 1.0:
        model = Tempered(model, temperature).eval()
    out = Path(cfg.out) if cfg.out else default_path(source, cfg.format, cfg.int8)
    if out.is_dir() and cfg.format != "openvino":
        example = out / default_path(source, cfg.format, cfg.int8).name
        raise ConfigError(f"{out} is a folder; give a file name with --out (e.g. {example})")
    contract = make_contract(meta, cfg.format, "int8" if cfg.int8 else "fp32", imgsz, cfg.dynamic_batch or cfg.int8,
                             str(source))
    if cfg.int8:
        contract["quantization"] = int8_recipe(cfg.int8_scheme)
    images, labels = _check_images(cfg, meta, imgsz) if cfg.check or cfg.int8 else (None, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = make_temp_dir(out.parent, f".{out.name}.")  # not mkdtemp: its 0700 would follow a folder export
    try:
        staged = work / out.name
        write_contract = _stage(cfg, model, meta, imgsz, staged, source.with_suffix("").name)
        write_contract(contract)  # before the runtime check, which reads it back
        # Even unchecked, an export its own runtime cannot load is not handed over.
        exported = _load_back(staged, cfg)
        if images is not None and labels is not None:
            contract["parity"] = _parity(model, exported, images, labels, meta, cfg)
            say(_describe(contract["parity"]))
            write_contract(contract)
        _move_into_place(staged, out, cfg.format)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"exported {source} -> {out} ({_size(out) / 1e6:.2f} MB, {cfg.format}"
        f"{' int8 ' + contract['quantization']['scheme'] if cfg.int8 else ''}, input {contract['input']['shape']})")
    return ExportResult(path=out, contract=contract)


def _stage(cfg: ExportConfig, model: nn.Module, meta: dict[str, Any], imgsz: Size, staged: Path,
           stem: str) -> Callable[[dict[str, Any]], None]:
    """Write the export at `staged` (inside the temporary folder); return how to (re)write its contract."""
    channels = int(meta["preprocess"]["channels"])
    dynamic = cfg.dynamic_batch or cfg.int8  # calibration feeds batches
    example = torch.zeros(2 if dynamic else 1, channels, *size_hw(imgsz))
    if cfg.format == "onnx":
        fp32 = staged.with_name("fp32.onnx") if cfg.int8 else staged
        _write_onnx(model, example, fp32, cfg.opset, dynamic=dynamic)
        if cfg.int8:
            _quantize(fp32, staged, meta, cfg, imgsz, staged.parent)
        return lambda contract: _set_onnx_metadata(staged, contract)
    if cfg.format == "torchscript":
        traced = _trace(model, example)
        return lambda contract: _save_torchscript(traced, staged, contract)
    staged.mkdir()
    _write_openvino(model, example, staged / f"{stem}.xml", cfg.dynamic_batch)
    return lambda contract: sidecar(staged).write_text(json.dumps(contract, indent=2))


def at_size(model: nn.Module, meta: dict[str, Any], imgsz: Size) -> nn.Module:
    trained = as_size(meta["preprocess"]["imgsz"])
    if imgsz == trained:
        return model
    from pigeon.models import create_model

    resized = create_model(meta["model"], num_classes=len(meta["classes"]),
                           in_chans=int(meta["preprocess"]["channels"]), imgsz=imgsz)
    try:
        resized.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError:
        was, new = size_text(trained), size_text(imgsz)
        raise ExportError(f"{meta['model']} changes its layout between {was} and {new} px, so these weights "
                          f"cannot run at {new}; export at --imgsz {was} or train at {new}") from None
    return resized


def _export_data(data: str | None, meta: dict[str, Any], imgsz: Size, cache_dir: str | None, need: str,
                 fix: str) -> Any:
    """The dataset at the export's input size and the checkpoint's preprocessing, or an ExportError saying
    what it was `need`ed for and the `fix`. Decoding is cached, so calibration and the check share it."""
    from pigeon.data import load_dataset

    try:
        if not data:
            raise DatasetError("the checkpoint does not name its training data")
        return load_dataset(str(data), imgsz=imgsz, channels=int(meta["preprocess"]["channels"]),
                            resize=meta["preprocess"]["resize"], cache_dir=cache_dir, verbose=False,
                            task="multilabel" if meta.get("task") == "multilabel" else "auto")
    except DatasetError as err:
        raise ExportError(f"{need} and could not read {data!r} ({err}); {fix}") from None


def _check_images(cfg: ExportConfig, meta: dict[str, Any], imgsz: Size) -> tuple[np.ndarray, np.ndarray]:
    """Real labelled images for the parity check: a seeded sample of the data's val split (else test, train)."""
    # INT8 is always measured against fp32, so for it skipping the check is not an option to offer
    skip = "" if cfg.int8 else ", or --no-check to skip the check"
    data = cfg.data or cfg.calib_data or meta.get("config", {}).get("data")
    ds = _export_data(data, meta, imgsz, cfg.cache_dir, "the parity check needs real images",
                      f"pass --data (a folder with the model's classes or a built-in name){skip}")
    split = ds.splits[next(s for s in ("val", "test", "train") if s in ds.splits)]
    pick = np.sort(np.random.default_rng(0).permutation(len(split.labels))[:cfg.check_images])
    classes = list(meta["classes"])
    unknown = [c for c in ds.classes if c not in classes]
    if unknown:
        raise ExportError(f"{data}: classes {unknown[:5]} are not the model's; give --data with its classes")
    return np.asarray(split.images[pick]), to_model_labels(np.asarray(split.labels)[pick], ds.classes, classes)



@contextlib.contextmanager
def _quiet() -> Any:
    """Exporters print progress and warn about their own deprecations; the user asked for a file, not those."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's quantizer logs shape notes on the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


_ONNX_REGISTRIES: dict[Any, Any] = {}


@contextlib.contextmanager
def _reused_onnx_registry() -> Any:
    """torch.onnx rebuilds its table of ATen -> ONNX translations (onnxscript's torchlib) on every export, about 1 s
    of the 2.4 s a small CNN takes here. pigeon never adds custom translations, so one table per opset serves every
    export of a process. It is private API: where it has moved, each export simply builds its own."""
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        raw, build = cls.__dict__["from_torchlib"], cls.from_torchlib
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def cached(*args: Any, **kwargs: Any) -> Any:
        args = tuple(a for a in args if not isinstance(a, cls))  # called on the class and on an instance
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _ONNX_REGISTRIES:
            _ONNX_REGISTRIES[key] = build(*args, **kwargs)
        return _ONNX_REGISTRIES[key]

    cls.from_torchlib = staticmethod(cached)
    try:
        yield
    finally:
        cls.from_torchlib = raw


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic else None
    try:
        with _quiet(), _reused_onnx_registry():
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes)
    except Exception as err:  # noqa: BLE001 - the exporter's failures are many types; all mean "cannot export"
        raise ExportError(f"PyTorch could not export this model to ONNX opset {opset} "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:300]}); try another --opset, or "
                          "--format torchscript") from None


def _set_onnx_metadata(path: Path, contract: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in ((METADATA_KEY, json.dumps(contract)), ("classes", json.dumps(contract["classes"]))):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.doc_string = f"pigeon export of {contract['model']}: see the '{METADATA_KEY}' metadata for preprocessing"
    onnx.save(model, str(path))


def _trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    try:
        with _quiet():
            return torch.jit.trace(model, example)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"TorchScript tracing failed ({type(err).__name__}: {str(err).splitlines()[0][:300]}); "
                          "use --format onnx") from None


def _save_torchscript(traced: torch.jit.ScriptModule, path: Path, contract: dict[str, Any]) -> None:
    # The contract travels inside the archive (so model and contract are replaced in one rename) and beside it
    # as a copy for people and other tools.
    text = json.dumps(contract, indent=2)
    with _quiet():
        traced.save(str(path), _extra_files={TORCHSCRIPT_ENTRY: text})
    sidecar(path).write_text(text)


def _write_openvino(model: nn.Module, example: torch.Tensor, xml: Path, dynamic: bool) -> None:
    ov = need("openvino")  # without OpenVINO's usage telemetry (pigeon.deploy.telemetry)

    try:
        with _quiet():
            ov_model = ov.convert_model(model, example_input=example)
            if dynamic:
                ov_model.reshape([-1, *example.shape[1:]])
            else:
                ov_model.reshape(list(example.shape))
            ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"OpenVINO could not convert this model ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:300]}); use --format onnx") from None


# onnxruntime's x86 INT8 kernels multiply uint8 activations by int8 weights. Without VNNI (AVX2, AVX-512 before
# Cascade Lake) they use VPMADDUBSW, which adds two such products into a signed 16-bit sum and saturates at
# 32,767: 255 x 127 x 2 = 64,770 can overflow, and the model's output drifts (seen: 0.37 in probability on an
# AVX2 EPYC). With 7-bit weights (onnxruntime's reduce_range, its documented remedy) the worst pair is
# 255 x 64 x 2 = 32,640, so the same file computes exactly on every x86 CPU; VNNI/AMX add in 32 bits anyway.
INT8_RECIPES: dict[str, dict[str, Any]] = {
    "u8s8-7bit": {"activations": "uint8", "weights": "int8", "weight_range": [-64, 64], "reduce_range": True,
                  "saturation_free_without_vnni": True},
    "u8s8": {"activations": "uint8", "weights": "int8", "weight_range": [-127, 127], "reduce_range": False,
             "saturation_free_without_vnni": False},
    "u8u8": {"activations": "uint8", "weights": "uint8", "weight_range": [0, 255], "reduce_range": False,
             "saturation_free_without_vnni": True},  # onnxruntime's other documented remedy: 16-bit kernels
}
DEFAULT_INT8_SCHEME = "u8s8-7bit"  # safe wherever the file is run, at a measured cost (README, Deploy)


def int8_recipe(scheme: str) -> dict[str, Any]:
    """What the contract records about an INT8 export's arithmetic; "auto" is the scheme safe on every CPU."""
    name = DEFAULT_INT8_SCHEME if scheme == "auto" else scheme
    return {"scheme": name, **INT8_RECIPES[name], "format": "QDQ", "per_channel": True, "calibration": "minmax"}


class _Calibration:
    """Feeds onnxruntime's static quantizer normalized training images, a batch at a time."""

    def __init__(self, images: np.ndarray, mean: np.ndarray, std: np.ndarray, batch: int = 32) -> None:
        top = float(np.iinfo(images.dtype).max)  # 255, or 65535 for 16-bit rasters: as normalize divides
        self.batches = [((images[i:i + batch].astype(np.float32) / top - mean) / std).astype(np.float32)
                        for i in range(0, len(images), batch)]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return {INPUT_NAME: self.batches.pop(0)} if self.batches else None

    def rewind(self) -> None:  # some onnxruntime versions call it
        pass


def _quantize(fp32: Path, out: Path, meta: dict[str, Any], cfg: ExportConfig, imgsz: Size, work: Path) -> None:
    from onnxruntime import quantization as q

    data = cfg.calib_data or cfg.data or meta.get("config", {}).get("data")
    ds = _export_data(data, meta, imgsz, cfg.cache_dir, "INT8 calibration needs training images",
                      "pass --calib-data (a folder or a built-in name)")
    train = ds.splits["train"]
    pick = np.sort(np.random.default_rng(1).permutation(len(train.labels))[:cfg.calib_images])
    shape = (1, -1, 1, 1)
    reader = _Calibration(np.asarray(train.images[pick]), np.array(meta["preprocess"]["mean"]).reshape(shape),
                          np.array(meta["preprocess"]["std"]).reshape(shape))
    prepped = work / "prepped.onnx"
    recipe = int8_recipe(cfg.int8_scheme)
    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    try:
        with _quiet():
            q.quant_pre_process(str(fp32), str(prepped))
            q.quantize_static(str(prepped), str(out), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                              reduce_range=recipe["reduce_range"], activation_type=types[recipe["activations"]],
                              weight_type=types[recipe["weights"]], calibrate_method=q.CalibrationMethod.MinMax)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"INT8 quantization failed ({type(err).__name__}: {str(err).splitlines()[0][:300]}); "
                          "export fp32 ONNX instead (drop --int8)") from None


def _load_back(staged: Path, cfg: ExportConfig) -> nn.Module:
    try:
        return load_runtime(staged)[0]
    except CheckpointError as err:
        hint = f" (written with opset {cfg.opset}: try another --opset)" if cfg.format == "onnx" else ""
        raise ExportError(f"the export was written but its runtime cannot load it{hint}: {err}") from None


def _parity(model: nn.Module, exported: nn.Module, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any],
            cfg: ExportConfig) -> dict[str, Any]:
    """PyTorch (fp32) and the export on the same real images: how often their answers agree (the top-1 class, or
    a multi-label model's whole label set), max |delta prob|, and the accuracy of each (top-1, or exact match)."""
    from pigeon.data.preprocess import Preprocess
    from pigeon.engine.evaluate import logits_for

    spec = Preprocess.from_dict({**meta["preprocess"], "imgsz": list(images.shape[-2:])})
    cpu = torch.device("cpu")
    ref_logits, got_logits = logits_for(model, images, spec, cpu), logits_for(exported, images, spec, cpu)
    if meta.get("task") == "multilabel":
        # An image's answer is its whole label set at the model's thresholds; its accuracy is exact match.
        from pigeon.calibration import thresholds_of

        thresholds = torch.tensor(thresholds_of(meta))
        ref, got = torch.sigmoid(ref_logits), torch.sigmoid(got_logits)
        ref_answer, got_answer, truth = ref >= thresholds, got >= thresholds, torch.as_tensor(labels).bool()
        agree_key, accuracy, accuracy_text, agrees = ("label_set_agreement", "exact_match", "exact-match accuracy",
                                                      "gives the same label set as PyTorch")
    else:
        ref, got = ref_logits.softmax(1), got_logits.softmax(1)
        ref_answer, got_answer, truth = ref.argmax(1), got.argmax(1), torch.as_tensor(labels)
        agree_key, accuracy, accuracy_text, agrees = "top1_agreement", "top1", "top-1", "agrees with PyTorch"

    def same(a: torch.Tensor, b: torch.Tensor) -> float:
        equal = a == b
        return float((equal.all(1) if equal.ndim == 2 else equal).float().mean())

    agreement = same(ref_answer, got_answer)
    report = {"images": len(labels), agree_key: agreement, "max_abs_prob_diff": float((ref - got).abs().max()),
              f"torch_{accuracy}": same(ref_answer, truth), f"export_{accuracy}": same(got_answer, truth)}
    if cfg.int8:
        drop = report[f"{accuracy}_drop"] = report[f"torch_{accuracy}"] - report[f"export_{accuracy}"]
        if drop > cfg.int8_max_drop:
            raise ExportError(f"INT8 loses {drop:.2%} {accuracy_text} against fp32 on {len(labels)} real "
                              f"images, more than --int8-max-drop {cfg.int8_max_drop:.2%}; calibrate on more "
                              "images (--calib-images), raise the bound, or export fp32 (drop --int8)")
    elif agreement < cfg.min_agreement:
        raise ExportError(f"the {cfg.format} export {agrees} on only {agreement:.2%} of {len(labels)} "
                          f"real images (needs {cfg.min_agreement:.2%}; max |delta prob| "
                          f"{report['max_abs_prob_diff']:.4f}); nothing was written. "
                          + ("Report this model as a bug" if cfg.format == "onnx" else
                             "Try --format onnx, or report this model as a bug"))
    return report


def _describe(parity: dict[str, Any]) -> str:
    if "label_set_agreement" in parity:
        return (f"parity on {parity['images']} real images: same label set {parity['label_set_agreement']:.2%}, max "
                f"|delta prob| {parity['max_abs_prob_diff']:.2e}, exact match {parity['torch_exact_match']:.2%} "
                f"(PyTorch) vs {parity['export_exact_match']:.2%} (export)")
    text = (f"parity on {parity['images']} real images: top-1 agreement {parity['top1_agreement']:.2%}, "
            f"max |delta prob| {parity['max_abs_prob_diff']:.2e}, accuracy {parity['torch_top1']:.2%} (PyTorch) vs "
            f"{parity['export_top1']:.2%} (export)")
    return text


def _move_into_place(staged: Path, out: Path, fmt: str) -> None:
    if out.is_dir():  # a folder cannot be replaced in one step: swap it aside, then delete the old one
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, out)
        if fmt == "torchscript":  # the copy for people; the archive already holds the contract
            os.replace(sidecar(staged), sidecar(out))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
