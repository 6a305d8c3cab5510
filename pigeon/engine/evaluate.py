"""Batched inference over uint8 arrays and the validation report built on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pigeon.calibration import calibration_report
from pigeon.data.preprocess import Preprocess, normalize
from pigeon.engine.device import autocast
from pigeon.metrics import classification_report, multilabel_report


@torch.inference_mode()
def logits_for(model: nn.Module, images: np.ndarray | torch.Tensor, spec: Preprocess, device: torch.device,
               batch: int = 512, amp: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 logits [N, K] on the CPU."""
    was_training = model.training
    if was_training:  # eval() walks every module: skip it on the hot predict path, where it is a no-op
        model.eval()
    mean = torch.tensor(spec.mean, device=device)
    std = torch.tensor(spec.std, device=device)
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        # Cached images are read-only memory maps, which torch.from_numpy warns about: copy those chunks.
        x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.require(chunk, requirements="CW"))
        x = normalize(x.to(device, non_blocking=True), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out.append(model(x).float().cpu())
    if was_training:
        model.train()
    if not out:
        return torch.empty(0, getattr(model, "num_classes", 0))
    return torch.cat(out)


def evaluate(model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray, classes: list[str],
             spec: Preprocess, device: torch.device, temperature: float = 1.0, min_conf: float | None = None,
             thresholds: list[float] | None = None, **kw: Any) -> tuple[dict[str, Any], torch.Tensor]:
    """Top-1/top-5, per-class precision/recall/F1, confusion matrix and mean cross-entropy, and the
    confidence figures at `temperature` (ECE, risk-coverage, thresholds; `min_conf`'s effect); plus the logits."""
    logits = logits_for(model, images, spec, device, **kw)
    return report_for(logits, labels, classes, temperature, min_conf, thresholds), logits


def report_for(logits: torch.Tensor, labels: np.ndarray, classes: list[str], temperature: float = 1.0,
               min_conf: float | None = None, thresholds: list[float] | None = None) -> dict[str, Any]:
    """The single-label report for [N] class indices, the multi-label one (at `thresholds`) for [N, K] rows."""
    if np.ndim(labels) == 2:
        return multilabel_report(logits, labels, list(classes), thresholds)
    targets = torch.as_tensor(np.array(labels, dtype=np.int64))
    report = classification_report(logits, targets, list(classes))
    report["loss"] = float(F.cross_entropy(logits, targets))  # the training loss's scale: no temperature
    report["calibration"] = calibration_report(logits, targets, temperature, min_conf)
    return report
