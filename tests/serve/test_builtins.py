"""The app offers the built-in datasets that are on this machine, and never downloads one from a form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar10_copy(folder: Path, per_batch: int = 20) -> Path:
    """An extracted CIFAR-10 binary version: records of 1 label byte and 3,072 pixel bytes (R, G, B planes)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = np.arange(per_batch, dtype=np.uint8) % 10
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return folder


def test_only_builtins_found_here_are_offered_and_none_is_downloaded(make_client: Any, h: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    token = h.csrf(client)
    offered = client.get("/api/v1/train-options").json()["builtins"]
    assert "digits" in offered and "cifar10" not in offered and "mnist" not in offered
    refused = client.post("/api/v1/datasets", json={"builtin": "cifar10"}, headers=token)
    assert h.error(refused) == (422, "bad_parameter")
    assert "pigeon train --data cifar10" in refused.json()["error"]["message"]
    assert h.error(client.post("/api/v1/datasets", json={"builtin": "imagenet"}, headers=token)) == \
        (422, "bad_parameter")

    monkeypatch.setenv("PIGEON_CIFAR10", str(_cifar10_copy(tmp_path / "cifar")))
    assert "cifar10" in client.get("/api/v1/train-options").json()["builtins"]
    ds = client.post("/api/v1/datasets", json={"builtin": "cifar10"}, headers=token).json()
    assert [c["name"] for c in ds["classes"]] == list(CIFAR10_CLASSES) and ds["splits"]["train"] == 100
    planned = client.post("/api/v1/plan", json={"dataset": ds["id"]}, headers=token).json()
    assert planned["imgsz"] == 32  # the built-in's own size, not a folder's default
