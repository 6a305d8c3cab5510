"""The contract an exported model carries: everything needed to feed it and read it, with no pigeon code.

ONNX files hold it as JSON under the metadata key "pigeon"; TorchScript and OpenVINO exports hold it in a
JSON file beside the model. `pigeon.load()` reads it back and applies exactly the preprocessing it names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pigeon.config import Size, size_hw
from pigeon.errors import CheckpointError

FORMAT = "pigeon-export"
FORMAT_VERSION = 1
METADATA_KEY = "pigeon"
TORCHSCRIPT_ENTRY = "pigeon.json"  # an "extra file" inside the TorchScript zip archive
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def make_contract(meta: dict[str, Any], runtime: str, precision: str, imgsz: Size, dynamic_batch: bool,
                  checkpoint: str) -> dict[str, Any]:
    pre = {**meta["preprocess"], "imgsz": list(imgsz) if isinstance(imgsz, tuple) else imgsz}  # [h, w] or a square
    h, w = size_hw(imgsz)
    calibration = meta.get("calibration") or None
    temperature = float(calibration["temperature"]) if calibration else 1.0
    channels = int(pre["channels"])
    multilabel = meta.get("task") == "multilabel"
    from pigeon.engine.checkpoint import versions

    output = {"name": OUTPUT_NAME, "kind": "logits", "probabilities": "softmax over the last axis",
              "temperature": temperature,
              "calibrated": ("the graph divides the logits by the temperature fitted on the validation split, so "
                             "their softmax is calibrated" if temperature != 1.0 else
                             "no: the checkpoint has no fitted temperature")}
    if multilabel:
        from pigeon.calibration import thresholds_of

        output = {"name": OUTPUT_NAME, "kind": "logits", "probabilities": "sigmoid of each logit, independently",
                  "decision": "a class is present when its sigmoid probability >= its threshold",
                  "thresholds": thresholds_of(meta),
                  "thresholds_fitted_on": (meta.get("thresholds") or {}).get("fitted_on")}

    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "runtime": runtime, "precision": precision,
        "model": meta["model"], "task": "multilabel" if multilabel else "multiclass", "classes": list(meta["classes"]),
        "preprocess": pre,
        "input": {
            "name": INPUT_NAME, "dtype": "float32", "layout": "NCHW",
            "shape": ["batch" if dynamic_batch else 1, channels, h, w],
            "color_order": ("RGB" if channels == 3 else "grayscale (L)") if pre.get("dtype", "uint8") == "uint8"
            and channels in (1, 3) else f"{channels} bands, in the order the training files store them",
            "resize": resize_text(pre["resize"], h, w),
            "normalize": "(pixel / 65535 - mean) / std per channel, pixel in 0..65535 (16-bit); mean and std in "
                         "preprocess" if pre.get("dtype") == "uint16" else
                         "(pixel / 255 - mean) / std per channel, pixel in 0..255; mean and std in preprocess",
        },
        "output": output,
        "calibration": ({**calibration, "applied_in_graph": True} if calibration else None),
        "source": {"checkpoint": checkpoint, "sha256": meta.get("sha256")},
        "versions": versions(),
    }


def resize_text(mode: str, h: int, w: int) -> str:
    """How `mode` maps an image onto the h x w input, in words a non-Python client can implement."""
    if h == w:
        return {"crop": f"shorter side to {h}, then centre crop {h}x{w}", "pad": f"longer side to {h}, then pad to "
                "square", "stretch": f"resize to {h}x{w} ignoring aspect ratio"}[mode]
    box = f"{h}x{w} (height x width)"
    return {"crop": f"scale by max({w} / width, {h} / height) to cover {box}, then centre crop to it",
            "pad": f"scale by min({w} / width, {h} / height) to fit inside {box}, then pad with 0 to it, centred",
            "stretch": f"resize to {box} ignoring aspect ratio"}[mode]


def sidecar(path: Path) -> Path:
    """Where a non-ONNX export keeps its contract as plain JSON: model.torchscript -> model.torchscript.json
    (a copy: the archive holds the original); an OpenVINO folder keeps pigeon.json inside."""
    return path / "pigeon.json" if path.is_dir() else path.with_name(path.name + ".json")


def _torchscript_entry(path: Path) -> str:
    """Read the contract straight from the zip archive, without loading (running) the TorchScript program."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_ENTRY}")), None)
            if name is None:
                raise CheckpointError(f"{path}: this TorchScript file has no pigeon contract (classes, "
                                      "preprocessing); it was not written by `pigeon export`. Export it with pigeon")
            return archive.read(name).decode()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({err}); export it again") from None


def read_contract(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if path.suffix == ".xml":  # an OpenVINO model: its contract is the folder's
        path = path.parent
    if path.suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # noqa: BLE001 - onnx raises many types for a damaged file
            raise CheckpointError(f"{path}: not a readable ONNX file ({type(err).__name__}); export it again") from None
        props = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in props:
            raise CheckpointError(f"{path}: this ONNX file has no pigeon contract (classes, preprocessing); it was "
                                  "not written by `pigeon export`. Export it with pigeon from its checkpoint")
        text, where = props[METADATA_KEY], path
    elif path.suffix == ".torchscript":
        text, where = _torchscript_entry(path), path
    else:
        where = sidecar(path)
        if not where.is_file():
            raise CheckpointError(f"{path}: its contract {where.name} (classes, preprocessing) is missing beside "
                                  "it; keep the files `pigeon export` wrote together, or export again")
        text = where.read_text()
    try:
        contract = json.loads(text)
    except ValueError:
        contract = None
    if not isinstance(contract, dict) or contract.get("format") != FORMAT:
        raise CheckpointError(f"{where}: the pigeon contract is damaged; export the model again")
    return contract
