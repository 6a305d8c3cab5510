"""Prediction: a loaded classifier that takes files, folders, globs, PIL images, arrays or tensors."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pigeon.calibration import UNKNOWN, present_classes, temperature_of, thresholds_of
from pigeon.config import PredictConfig, build
from pigeon.data.preprocess import FILE_EXTENSIONS, Preprocess, array_to_uint8, image_to_array, open_image
from pigeon.data.rasters import probe, read_raster, resize_raster, to_dtype
from pigeon.engine.device import amp_dtype, select_device
from pigeon.engine.evaluate import logits_for
from pigeon.errors import ConfigError, DatasetError, ImageError, describe


@dataclass(frozen=True)
class Prediction:
    """One image's result. `error` is set (and the rest empty) when the image could not be read.

    With `min_conf` set, an image whose top-1 confidence is below it is `abstained`: its label is "unknown",
    while `top1` and `probs` still hold the model's best guess for whoever wants to look.

    A multi-label model's Prediction has `thresholds`: `probs` are per-class sigmoid probabilities and `labels`
    every class at or above its threshold, most probable first; `label` joins them with ";" ("" for none).
    """

    source: str
    classes: tuple[str, ...] = field(repr=False)
    probs: np.ndarray | None = field(default=None, repr=False)
    top_k: int = 5
    error: str | None = None
    min_conf: float | None = None
    thresholds: np.ndarray | None = field(default=None, repr=False)  # per class, for a multi-label model

    @property
    def multilabel(self) -> bool:
        return self.thresholds is not None

    @property
    def labels(self) -> list[str]:
        """Every predicted class, most probable first: those at or above their thresholds (multi-label), or the
        one top-1 class unless abstained."""
        if self.probs is None:
            return []
        if self.thresholds is None:
            return [] if self.abstained else [self.classes[self.top1]]  # type: ignore[index]
        return [self.classes[i] for i in present_classes(self.probs, self.thresholds)]

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top5(self) -> list[int]:
        """Class indices of the (up to) top_k most probable classes, best first."""
        return [] if self.probs is None else [int(i) for i in np.argsort(-self.probs, kind="stable")[:self.top_k]]

    @property
    def top1(self) -> int | None:
        return self.top5[0] if self.probs is not None else None

    @property
    def top1_conf(self) -> float | None:
        return float(self.probs[self.top1]) if self.probs is not None and self.top1 is not None else None

    @property
    def abstained(self) -> bool:
        conf = self.top1_conf
        return self.min_conf is not None and conf is not None and conf < self.min_conf

    @property
    def label(self) -> str | None:
        if self.top1 is None:
            return None
        if self.thresholds is not None:
            return ";".join(self.labels)  # a labels CSV's own spelling
        return UNKNOWN if self.abstained else self.classes[self.top1]

    def to_dict(self) -> dict[str, Any]:
        if self.probs is None:
            return {"source": self.source, "error": self.error}
        if self.thresholds is not None:
            index = {c: i for i, c in enumerate(self.classes)}
            return {"source": self.source, "label": self.label, "labels": self.labels,
                    "scores": [{"label": c, "index": index[c], "prob": round(float(self.probs[index[c]]), 6),
                                "threshold": round(float(self.thresholds[index[c]]), 6)} for c in self.labels],
                    "top_k": [{"label": self.classes[i], "index": i, "prob": round(float(self.probs[i]), 6)}
                              for i in self.top5]}
        out = {"source": self.source, "label": self.label, "confidence": round(float(self.top1_conf or 0), 6),
               "top_k": [{"label": self.classes[i], "index": i, "prob": round(float(self.probs[i]), 6)}
                         for i in self.top5]}
        if self.min_conf is not None:
            out.update(abstained=self.abstained, min_conf=self.min_conf)
        return out

    def __repr__(self) -> str:
        if self.error:
            return f"Prediction(source={self.source!r}, error={self.error!r})"
        if self.thresholds is not None:
            return f"Prediction(source={self.source!r}, labels={self.labels!r})"
        return f"Prediction(source={self.source!r}, label={self.label!r}, conf={self.top1_conf:.4f})"


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand_paths(source: str | os.PathLike[str]) -> list[str]:
    """A file, a folder (its images, recursively, sorted) or a glob pattern -> file paths."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_EXTENSIONS)
        if not found:  # like a pattern that matches nothing: say so instead of predicting on nothing
            raise DatasetError(f"{text}: the folder holds no images ({', '.join(sorted(FILE_EXTENSIONS))})")
        return found
    if path.exists() or not _is_glob(text):
        if not path.exists():
            raise DatasetError(f"{text}: no such file or folder; give an image file, a folder or a glob pattern")
        return [str(path)]
    matches = sorted(m for m in glob.glob(os.path.expanduser(text), recursive=True) if os.path.isfile(m))
    if not matches:
        raise DatasetError(f"{text}: the pattern matches no files")
    return matches


def _items(source: Any) -> tuple[list[tuple[str, Any]], bool]:
    """Flatten any accepted source into (name, item) pairs; the flag says whether one result is expected."""
    from PIL import Image

    if isinstance(source, (str, os.PathLike)):
        paths = expand_paths(source)
        single = len(paths) == 1 and Path(source).expanduser().is_file()
        return [(p, p) for p in paths], single
    if isinstance(source, Image.Image):
        return [("<PIL image>", source)], True
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if source.ndim == 4:  # a batch [N, C, H, W] or [N, H, W, C]
            return [(f"<array[{i}]>", a) for i, a in enumerate(source)], False
        return [("<array>", source)], True
    if isinstance(source, (bytes, bytearray)):
        return [("<bytes>", bytes(source))], True
    if isinstance(source, Iterable):
        items: list[tuple[str, Any]] = []
        for element in source:
            items.extend(_items(element)[0])
        return items, False
    raise DatasetError(f"cannot predict on a {type(source).__name__}; give a path, folder, glob, PIL image, "
                       "numpy array, tensor or a list of those")


def _to_uint8(item: Any, spec: Preprocess) -> np.ndarray:
    """Any accepted item -> [C, H, W] as the model's cache held it: uint8, or its rasters' dtype."""
    if spec.raster or (isinstance(item, (str, os.PathLike)) and probe(item) is not None):
        return _to_raster(item, spec)
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return array_to_uint8(item, spec)
    return image_to_array(open_image(item), spec.imgsz, spec.channels, spec.resize)


def _to_raster(item: Any, spec: Preprocess) -> np.ndarray:
    """A raster file or array, band by band as pigeon.data.folders decodes a raster folder."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray) or Path(item).suffix.lower() == ".npy" or probe(item) is not None:
        arr = resize_raster(read_raster(item), spec.imgsz, spec.resize)
    elif spec.channels in (1, 3):
        arr = image_to_array(open_image(item), spec.imgsz, spec.channels, spec.resize)
    else:
        raise ImageError(f"the model takes {spec.channels}-band rasters; give a .npy array or a TIFF with "
                         f"{spec.channels} bands, not an 8-bit image of 1 or 3 channels")
    if arr.shape[0] != spec.channels:
        raise ImageError(f"has {arr.shape[0]} band(s); the model takes {spec.channels}: give images with the "
                         "bands it was trained on, in the same order")
    return to_dtype(arr, spec.dtype)


class Classifier:
    """A trained model plus everything needed to use it: class names and its preprocessing."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], device: str = "auto") -> None:
        self.device = select_device(device)
        self.model = model.eval().to(self.device)
        self.meta = meta
        self.classes: tuple[str, ...] = tuple(meta["classes"])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        # softmax(logits / T) with the temperature fitted after training: 1 for uncalibrated checkpoints and for
        # exports, whose graph divides already.
        self.temperature = temperature_of(meta)
        self.task = str(meta.get("task", "multiclass"))
        # A multi-label model says "yes" to each class at its own threshold, fitted on val after training.
        self.thresholds = (np.asarray(thresholds_of(meta), dtype=np.float64) if self.task == "multilabel"
                           else None)
        self.fitted_temperature = float((meta.get("calibration") or {}).get("temperature", 1.0))
        # The same precision and memory format as training's validation, so predictions match the reported
        # accuracy: bf16 where the CPU or GPU runs it natively (5x the batch throughput on this CPU), unless
        # the model was trained and measured with amp off.
        trained_amp = meta.get("config", {}).get("amp", "auto")
        self.amp = None if trained_amp == "off" else amp_dtype(self.device, "auto")
        # An exported model (meta["runtime"]) takes plain fp32 NCHW arrays; memory format means nothing to it.
        self.channels_last = self.device.type != "mps" and "runtime" not in meta
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __repr__(self) -> str:
        return (f"Classifier(model={self.meta.get('model')!r}, classes={len(self.classes)}, "
                f"imgsz={self.preprocess.imgsz}, channels={self.preprocess.channels}, device={self.device})")

    def predict(self, source: Any, top_k: int = 5, batch: int = 64,
                min_conf: float | None = None) -> Prediction | list[Prediction]:
        """Predict one image (returns a Prediction) or many (returns a list, in input order).

        With `min_conf`, images whose calibrated top-1 confidence is below it are labelled "unknown".
        """
        items, single = _items(source)
        results = list(self.iter_predict(items, top_k=top_k, batch=batch, min_conf=min_conf))
        return results[0] if single and len(results) == 1 else results

    def iter_predict(self, items: list[tuple[str, Any]], top_k: int, batch: int,
                     min_conf: float | None = None) -> Iterator[Prediction]:
        self.check_min_conf(min_conf)
        top_k = max(1, min(top_k, len(self.classes)))
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            arrays: list[np.ndarray | None] = []
            errors: list[str | None] = []
            for _, item in chunk:
                try:
                    arrays.append(_to_uint8(item, self.preprocess))
                    errors.append(None)
                except Exception as err:  # noqa: BLE001 - one bad image becomes one error entry, not a crash
                    arrays.append(None)
                    errors.append(describe(err))
            good = [a for a in arrays if a is not None]
            probs = iter(self.probabilities(np.stack(good)) if good else [])
            for (name, _), arr, err in zip(chunk, arrays, errors):
                yield Prediction(name, self.classes, next(probs) if arr is not None else None, top_k, err, min_conf,
                                 self.thresholds)

    def check_min_conf(self, min_conf: float | None) -> None:
        """Refuse a `min_conf` this model cannot honour, with pigeon.predict's message (predict and val share it)."""
        build(PredictConfig, min_conf=min_conf)
        if min_conf is not None and self.thresholds is not None:
            raise ConfigError("min_conf is for single-label models; a multi-label model answers each class at its "
                              "own threshold (fitted on val), and an image with no class above it gets no label")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, C, H, W] already preprocessed -> calibrated probabilities [N, K]: a softmax, or one sigmoid
        per class for a multi-label model."""
        if self.thresholds is not None:
            return torch.sigmoid(self.logits(images)).numpy()
        return (self.logits(images) / self.temperature).softmax(1).numpy()

    def logits(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, C, H, W] already preprocessed -> logits [N, K], before the checkpoint's temperature (an
        export's graph has divided by its own already)."""
        return logits_for(self.model, images, self.preprocess, self.device, amp=self.amp,
                          channels_last=self.channels_last)
