"""The models the server answers with: loaded on first use, warmed by one forward pass, each with its batcher.

A model's id is the first 12 hex digits of its file's SHA-256, so the same weights keep the same id across
restarts and copies. `--model` is the default; every finished run under the home can be served as well.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.serve.errors import ApiError


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:  # an OpenVINO export is a folder: hash its files in order
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class ServedModel:
    id: str
    path: Path
    sha256: str
    name: str
    clf: Any = None  # pigeon Classifier, once loaded
    batcher: Any = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self, default_id: str | None) -> dict[str, Any]:
        clf = self.clf
        return {"id": self.id, "name": self.name, "path": str(self.path), "sha256": self.sha256,
                "format": _format(self.path), "classes": list(clf.classes) if clf else None,
                "imgsz": clf.preprocess.imgsz if clf else None, "loaded": clf is not None,
                "default": self.id == default_id}


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".safetensors": "pytorch", ".onnx": "onnx", ".torchscript": "torchscript"}.get(
        suffix, "openvino" if suffix == ".xml" or path.is_dir() else suffix.lstrip("."))


def _name(path: Path) -> str:
    """runs/train/<run>/weights/best.safetensors -> '<run>/best'."""
    return f"{path.parent.parent.name}/{path.stem}" if path.parent.name == "weights" else path.stem


class ModelRegistry:
    def __init__(self, make_batcher: Any) -> None:
        self._models: dict[str, ServedModel] = {}
        self._by_path: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._make_batcher = make_batcher  # (run_fn) -> Batcher, so every model batches with the app's settings
        self.default_id: str | None = None

    def register_path(self, path: str | Path, default: bool = False) -> str:
        path = Path(path).resolve()
        if not path.exists():
            raise ApiError(404, "no_model", f"{path}: no such model file; give a checkpoint "
                           "(runs/train/<name>/weights/best.safetensors) or an export (.onnx, ...)")
        with self._lock:
            known = self._by_path.get(path)
        sha = file_sha256(path)
        if known and self._models[known].sha256 == sha:
            model_id = known
        else:
            model_id = sha[:12]
            with self._lock:
                self._models.setdefault(model_id, ServedModel(model_id, path, sha, _name(path)))
                self._by_path[path] = model_id
        if default:
            self.default_id = model_id
        return model_id

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            models = list(self._models.values())
        return [m.describe(self.default_id) for m in models]

    def loaded(self, model_id: str | None) -> ServedModel | None:
        """The model if it is loaded already (no thread hop needed), else None."""
        model = self._models.get(self.default_id if model_id is None else model_id)  # type: ignore[arg-type]
        return model if model is not None and model.clf is not None else None

    def get(self, model_id: str | None) -> ServedModel:
        """The model with this id (None: the default), loaded and warm."""
        if model_id is None:
            if self.default_id is None:
                raise ApiError(404, "no_model", "no model is served by default; start pigeon serve with --model "
                               "PATH, or POST to /api/v1/models/{id}/predict with an id from GET /api/v1/models")
            model_id = self.default_id
        with self._lock:
            model = self._models.get(model_id)
        if model is None:
            raise ApiError(404, "no_model", f"no model with id {model_id!r}; GET /api/v1/models lists them")
        with model.lock:
            if model.clf is None:
                self._load(model)
        return model

    def _load(self, model: ServedModel) -> None:
        from pigeon import api

        try:
            clf = api.load(model.path)
        except Exception as err:  # noqa: BLE001 - the error goes to the client and to /readyz
            model.error = f"{type(err).__name__}: {err}"
            raise ApiError(503, "not_ready", f"model {model.id} could not be loaded: {model.error}") from None
        spec = clf.preprocess
        clf.probabilities(np.zeros((1, spec.channels, *spec.hw), np.uint8))  # warm up the kernels
        model.clf, model.error = clf, None  # loaded and warm: /readyz answers 200 from here on
        model.batcher = self._make_batcher(clf.probabilities)

    def close(self) -> None:
        for model in self._models.values():
            if model.batcher is not None:
                model.batcher.close()
