"""POST /predict with a multi-label model: every class at or above its own threshold, as pigeon.load answers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture
def multilabel_checkpoint(tmp_path: Path) -> Path:
    """A multi-label pigeon-p on 16x16 grey images whose thresholds fix two answers: class "always" at 0 is in
    every label set, "never" above 1 in none, and "maybe" at 0.5 depends on the image."""
    from pigeon.data.preprocess import Preprocess
    from pigeon.engine import checkpoint
    from pigeon.models import create_model

    torch.manual_seed(0)
    model = create_model("pigeon-p", num_classes=3, in_chans=1, imgsz=16)
    spec = Preprocess(imgsz=16, channels=1, resize="crop", mean=(0.3,), std=(0.3,))
    meta = {"model": "pigeon-p", "task": "multilabel", "classes": ["always", "maybe", "never"],
            "preprocess": spec.to_dict(), "thresholds": {"values": [0.0, 0.5, 1.01], "fitted_on": "val"}}
    return checkpoint.save(tmp_path / "ml.safetensors", model.eval(), meta)


def test_a_multi_label_model_answers_label_sets_and_ignores_min_conf(make_client: Any, multilabel_checkpoint: Path,
                                                                     digit_pngs: list[tuple[int, bytes]]) -> None:
    import pigeon

    client = make_client(model=str(multilabel_checkpoint), min_conf=0.99)  # a server default that must not apply
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pngs = [data for _, data in digit_pngs[:6]]
    body = client.post("/api/v1/predict?top_k=3", files=[("file", (f"{i}.png", d, "image/png"))
                                                         for i, d in enumerate(pngs)]).json()
    assert body["model"]["task"] == "multilabel" and body["min_conf"] is None
    clf = pigeon.load(multilabel_checkpoint, device="cpu")
    for pred, data in zip(body["predictions"], pngs):
        expected = clf.predict(data)
        names = [t["label"] for t in pred["labels"]]
        assert names == expected.labels and pred["label"] == ";".join(names) and not pred["abstained"]
        assert "always" in names and "never" not in names
        assert [t["threshold"] for t in pred["labels"]] == [[0.0, 0.5, 1.01][clf.classes.index(n)] for n in names]
        assert [t["score"] for t in pred["labels"]] == pytest.approx(
            [float(expected.probs[clf.classes.index(n)]) for n in names], abs=1e-4)
