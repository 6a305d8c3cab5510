"""The planned time of a training job, from a measured pace: a few real training steps of that model at
that size and batch on this machine, timed after the first (which compiles kernels), cached per setting."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

_paces: dict[tuple[str, int, int, int, int], float] = {}
_lock = threading.Lock()
STEPS = 4


def pace(model_name: str, num_classes: int, channels: int, imgsz: int, batch: int) -> float:
    """Training images per second on this machine's CPU/GPU, with pigeon's default precision."""
    key = (model_name, num_classes, channels, imgsz, batch)
    with _lock:
        if key in _paces:
            return _paces[key]
    import torch

    from pigeon.engine.device import amp_dtype, select_device
    from pigeon.engine.train import train_step
    from pigeon.models import create_model

    device = select_device("auto")
    model = create_model(model_name, num_classes=num_classes, in_chans=channels, imgsz=imgsz).to(device).train()
    model = model.to(memory_format=torch.channels_last) if device.type != "mps" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(enabled=False)
    amp = amp_dtype(device, "auto")
    x = torch.randn(batch, channels, imgsz, imgsz, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    start = 0.0
    for i in range(STEPS):
        if i == 1:
            start = time.perf_counter()
        train_step(model, x, y, opt, scaler, 0.01, amp, 0.0, 0.0)
    rate = (STEPS - 1) * batch / (time.perf_counter() - start)
    with _lock:
        _paces[key] = rate
    return rate


def _folder_default(root: Path) -> tuple[int, int]:
    """The size and channels `pigeon train` would pick for this folder, from image headers only."""
    from PIL import Image

    from pigeon.data import folder_imgsz
    from pigeon.data.folders import scan

    try:
        _, files, _ = scan(root)
        imgsz, _ = folder_imgsz(root, files=files)
    except Exception:  # noqa: BLE001 - a folder that would not train gets no plan anyway
        return 32, 3
    sample = files["train"][:: max(1, len(files["train"]) // 20)][:20]
    modes = set()
    for path, _ in sample:
        try:
            with Image.open(path) as img:
                modes.add(img.mode)
        except Exception:  # noqa: BLE001 - unreadable files are the audit's to report
            continue
    return imgsz, 1 if modes and modes <= {"L", "LA", "I;16", "I", "1"} else 3


def plan(record: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    from pigeon.data.builtins import BUILTINS
    from pigeon.engine.recipe import AUTO_MODEL, recipe_for

    builtin = BUILTINS.get(record["path"]) if record.get("kind") == "builtin" else None
    native = (builtin.shape[1], builtin.shape[0]) if builtin else _folder_default(Path(record["path"]))
    imgsz = int(options.get("imgsz") or native[0])
    channels = int(options.get("channels") or native[1])
    classes = max(2, len(record["classes"]))
    train_images = int(record["splits"].get("train", 0))
    if "val" not in record["splits"]:
        train_images = round(train_images * (1 - float(options.get("val_fraction") or 0.1)))
    recipe = recipe_for(str(options.get("device") or "auto"), str(options.get("amp") or "auto"), train_images)
    model = str(options.get("model") or AUTO_MODEL)
    model = recipe.model if model == AUTO_MODEL else model
    epochs = int(options.get("epochs") or recipe.epochs)
    batch = int(options.get("batch") or recipe.batch)
    rate = pace(model, classes, channels, imgsz, min(batch, max(2, train_images)))
    seconds = epochs * train_images / rate
    budget = options.get("time")
    if budget:
        seconds = min(seconds, float(budget) * 3600)
    return {"seconds": round(seconds, 1), "images_per_second": round(rate, 1), "model": model, "epochs": epochs,
            "train_images": train_images, "imgsz": imgsz, "batch": batch, "source": "measured",
            "note": "training steps only, timed on this machine now; validation adds a little per epoch"}
