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

from pigeon.config import as_size
from pigeon.errors import CheckpointError
from pigeon.io import atomic_write_bytes, write_json

FORMAT = "pigeon-checkpoint"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    from pigeon._version import __version__

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
    from safetensors.torch import save as to_bytes

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "versions": versions(),
            "sha256": weights_digest(state)}
    # Bytes, not save_file: safetensors writes its files with mode 0600, which no one else could read.
    atomic_write_bytes(path, to_bytes(state, metadata={"pigeon": json.dumps(meta)}))
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
    try:
        meta = json.loads(header["pigeon"])
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its pigeon metadata is not a JSON object; the file was modified or "
                              "damaged. Use another copy")
    if "sha256" not in meta:
        raise CheckpointError(f"{path}: its pigeon metadata has no weights digest (sha256), so the weights "
                              "cannot be verified; the file was modified. Use another copy")
    if weights_digest(state) != meta["sha256"]:
        raise CheckpointError(f"{path}: the weights do not match the digest recorded when they were saved; "
                              "the file was modified or damaged. Use another copy")
    return state, meta


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    from pigeon.models import create_model

    state, meta = read(path)
    missing = [key for key in ("model", "classes", "preprocess") if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: its pigeon metadata lacks {', '.join(missing)}; the file was "
                              "modified or damaged. Use another copy")
    model = create_model(meta["model"], num_classes=len(meta["classes"]),
                         in_chans=int(meta["preprocess"]["channels"]), imgsz=as_size(meta["preprocess"]["imgsz"]))
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(state)) + [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
        if k in state and state[k].shape != v.shape]
    if wrong:
        shown = "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise CheckpointError(f"{path}: the weights do not fit model {meta['model']!r} ({shown}); "
                              "the file was modified or written for another model")
    model.load_state_dict(state, strict=True)
    return model.eval(), meta
