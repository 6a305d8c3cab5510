"""The exports of the shared digits checkpoint that tests/conftest.py's `digits_exports` fixture makes once per
session, so that every test that only reads an export reads the same files instead of exporting its own."""

from __future__ import annotations

from typing import Any

# name -> export options; every export is written at its default path beside the checkpoint but one
FORMATS: dict[str, dict[str, Any]] = {
    "onnx": {"format": "onnx"},
    "onnx-int8": {"format": "onnx", "int8": True, "calib_images": 64, "int8_max_drop": 0.05},
    "onnx-dynamic": {"format": "onnx", "dynamic_batch": True},
    "torchscript": {"format": "torchscript"},
    "openvino": {"format": "openvino"},
}
CHECK_IMAGES = 200  # each export's parity check, on digits' test images
