"""Deployment: exports (ONNX fp32/INT8, TorchScript, OpenVINO IR) that carry their preprocessing, and runtimes."""

from pigeon.deploy.contract import read_contract
from pigeon.deploy.exporter import ExportResult, export
from pigeon.deploy.runtimes import EXPORT_SUFFIXES, load_runtime

__all__ = ["EXPORT_SUFFIXES", "ExportResult", "export", "load_runtime", "read_contract"]
