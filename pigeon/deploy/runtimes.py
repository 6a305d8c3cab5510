"""Exported models as callables that look like a PyTorch module: float images [N, C, H, W] in, logits out.

So `Classifier`, `predict` and `val` run an ONNX, TorchScript or OpenVINO export exactly as a checkpoint.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pigeon.deploy.contract import read_contract, sidecar
from pigeon.deploy.telemetry import import_quietly
from pigeon.errors import CheckpointError, ConfigError

EXPORT_SUFFIXES = (".onnx", ".torchscript", ".xml")


def need(package: str, extra: str = "export") -> Any:
    """Import an optional package (runtimes with their telemetry off), or say which extra installs it."""
    try:
        return import_quietly(package)
    except ImportError:
        raise ConfigError(f"this needs {package}: pip install 'pigeon[{extra}]'") from None


class RuntimeModule(nn.Module):
    """Runs a fixed- or dynamic-batch graph; a fixed batch is fed one slice at a time."""

    def __init__(self, fixed_batch: int | None) -> None:
        super().__init__()
        self.fixed_batch = fixed_batch

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().contiguous().numpy()
        step = self.fixed_batch or len(arr)
        outs = [self.run(np.ascontiguousarray(arr[i:i + step])) for i in range(0, len(arr), max(step, 1))]
        return torch.from_numpy(np.concatenate(outs)) if outs else torch.empty(0)


class OnnxModule(RuntimeModule):
    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = need("onnxruntime")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types, not importable portably
            raise CheckpointError(f"{path}: onnxruntime {ort.__version__} cannot load it "
                                  f"({str(err).splitlines()[0][:300]}); export it again, with a lower --opset if "
                                  "the message names one") from None
        first = self.session.get_inputs()[0]
        super().__init__(first.shape[0] if isinstance(first.shape[0], int) else None)
        self.input_name = first.name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class OpenVinoModule(RuntimeModule):
    def __init__(self, xml: Path) -> None:
        ov = need("openvino")
        try:
            # f32 on purpose: OpenVINO would otherwise pick bf16 on CPUs that have it, and the export
            # would no longer give PyTorch's fp32 answers.
            self.compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{xml}: OpenVINO cannot load it ({str(err).splitlines()[0][:300]}); "
                                  "export it again") from None
        shape = self.compiled.inputs[0].get_partial_shape()
        super().__init__(shape[0].get_length() if shape[0].is_static else None)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(x)[0])


def model_file(path: Path) -> Path:
    """An OpenVINO export is a folder; the .xml inside (or given directly) is the model."""
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise CheckpointError(f"{path}: expected one OpenVINO .xml model in this folder, found {len(xmls)}")
        return xmls[0]
    return path


def load_runtime(path: str | os.PathLike[str], threads: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """An exported model and its metadata, in the shape `Classifier` takes (classes, preprocess, model)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    file = model_file(path)
    if file.suffix == ".onnx":
        module: nn.Module = OnnxModule(file, threads)
        contract = read_contract(file)
    elif file.suffix == ".xml":
        module = OpenVinoModule(file)
        contract = read_contract(file.parent)
    elif file.suffix == ".torchscript":
        contract = read_contract(file)  # first: refuse a stray file before running its TorchScript program
        with warnings.catch_warnings():  # PyTorch deprecates TorchScript; the format still loads and runs
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(file), map_location="cpu")
    else:
        raise CheckpointError(f"{path}: not an export pigeon reads ({', '.join(EXPORT_SUFFIXES)} or an OpenVINO "
                              f"folder with {sidecar(path).name})")
    meta = {"model": contract["model"], "classes": contract["classes"], "preprocess": contract["preprocess"],
            "config": {"amp": "off"}, "runtime": contract["runtime"], "precision": contract["precision"],
            "contract": contract, "calibration": contract.get("calibration"),
            "task": contract.get("task", "multiclass")}
    if meta["task"] == "multilabel":
        meta["thresholds"] = {"values": contract["output"]["thresholds"],
                              "fitted_on": contract["output"].get("thresholds_fitted_on")}
    return module.eval(), meta
