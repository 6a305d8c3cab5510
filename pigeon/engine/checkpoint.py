"""Checkpoints as data, never pickles: weights in safetensors, metadata as JSON inside it and beside it.

<name>.safetensors   tensors, plus the metadata JSON under the header key "pigeon"
<name>.meta.json     the same metadata, for people and tools that do not read safetensors
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pigeon.errors import CheckpointError
from pigeon.io import atomic_path, write_json

FORMAT = "pigeon-checkpoint"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    from pigeon import __version__

    return {"pigeon": __version__, "torch": torch.__version__, "python": platform.python_version()}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "versions": versions(),
            "sha256": weights_digest(state)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"pigeon": json.dumps(meta)})
    write_json(path.with_suffix(".meta.json"), meta)
    return path


def read(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and metadata, verifying the weights against the recorded digest."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; give the path of a .safetensors file "
                              "written by `pigeon train` (runs/train/<name>/weights/best.safetensors)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be truncated "
                              "or corrupt: re-export or re-train it") from None
    if "pigeon" not in header:
        raise CheckpointError(f"{path} has no pigeon metadata (class names, preprocessing); it was not "
                              "written by pigeon. Fine-tune from it with --weights instead")
    meta = json.loads(header["pigeon"])
    if meta.get("sha256") and weights_digest(state) != meta["sha256"]:
        raise CheckpointError(f"{path}: the weights do not match the digest recorded when they were saved; "
                              "the file was modified or damaged. Use another copy")
    return state, meta


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    from pigeon.models import create_model

    state, meta = read(path)
    model = create_model(meta["model"], num_classes=len(meta["classes"]),
                         in_chans=int(meta["preprocess"]["channels"]), imgsz=int(meta["preprocess"]["imgsz"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit model {meta['model']!r}: {err}") from None
    return model.eval(), meta
