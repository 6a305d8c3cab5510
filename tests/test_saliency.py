"""Grad-CAM / Grad-CAM++: the map peaks on the patch that decides the class, and it depends on what the model
learnt (Adebayo et al., 2018: maps of the trained model differ clearly from those of randomised weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import pigeon
from pigeon.cli import main
from pigeon.engine.saliency import find_layer, maps_for
from pigeon.models import create_model

SIZE, PATCH = 32, 8


def _patch(kind: int) -> np.ndarray:
    """Class 0: horizontal stripes, class 1: vertical stripes, 2: a checkerboard of the same brightness that
    every image also carries somewhere else, as a distractor that decides nothing."""
    p = np.zeros((PATCH, PATCH), np.uint8)
    if kind == 0:
        p[::2] = 255
    elif kind == 1:
        p[:, ::2] = 255
    else:
        p[(np.add.outer(np.arange(PATCH), np.arange(PATCH)) // 2) % 2 == 0] = 255
    return p


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A pigeon-n trained on the patch folder, without flips or shifts: plain data for a plain check."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("patches") / "data"
    boxes: dict[str, tuple[int, int]] = {}
    for split, n in (("train", 48), ("val", 16)):
        for c in range(2):
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for k in range(n):
                img = rng.integers(0, 100, (SIZE, SIZE), dtype=np.uint8)
                while True:
                    y, x, y2, x2 = (int(v) for v in rng.integers(0, SIZE - PATCH + 1, 4))
                    if abs(y - y2) > PATCH or abs(x - x2) > PATCH:
                        break
                img[y:y + PATCH, x:x + PATCH] = _patch(c)
                img[y2:y2 + PATCH, x2:x2 + PATCH] = _patch(2)
                Image.fromarray(img).save(folder / f"{k}.png")
                boxes[str(folder / f"{k}.png")] = (y, x)
    base = tmp_path_factory.mktemp("patch-run")
    run = pigeon.train(str(root), epochs=4, batch=32, imgsz=SIZE, fliplr=0.0, translate=0, device="cpu", amp="off",
                       plots=False, verbose=False, project=str(base), cache_dir=str(base / "cache"))
    files = sorted(boxes)[-32:]  # the val images sort last (".../val/...")
    assert all("/val/" in f for f in files)
    images = np.stack([np.asarray(Image.open(f))[None] for f in files])
    return {"run": run, "files": files, "boxes": boxes, "images": images, "root": root}


def _hits(maps: np.ndarray, files: list[str], boxes: dict[str, tuple[int, int]]) -> float:
    """Fraction of maps whose peak lies on the deciding patch (within 2 px of it)."""
    hits = 0
    for f, m in zip(files, maps):
        y, x = boxes[f]
        py, px = np.unravel_index(int(m.argmax()), m.shape)
        hits += (y - 2 <= py < y + PATCH + 2) and (x - 2 <= px < x + PATCH + 2)
    return hits / len(files)


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def _top_overlap(a: np.ndarray, b: np.ndarray, q: float = 0.1) -> float:
    k = int(q * a.size)
    return len(set(np.argsort(-a.ravel())[:k]) & set(np.argsort(-b.ravel())[:k])) / k


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_map_peaks_on_the_patch_that_decides_and_not_for_random_weights(patch_run: dict[str, Any],
                                                                         method: str) -> None:
    clf = pigeon.load(patch_run["run"].best, device="cpu")
    assert patch_run["run"].val["top1"] >= 0.9  # the model did learn the task
    maps, logits, layer = maps_for(clf.model, patch_run["images"], clf.preprocess, clf.device, method=method)
    assert layer == "stages" and maps.shape == (32, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    trained = _hits(maps, patch_run["files"], patch_run["boxes"])
    assert trained >= 0.9, trained

    torch.manual_seed(123)
    random_model = create_model("pigeon-n", num_classes=2, in_chans=1, imgsz=SIZE).eval()
    rand, _, _ = maps_for(random_model, patch_run["images"], clf.preprocess, clf.device,
                          target=logits.argmax(1), method=method)
    assert _hits(rand, patch_run["files"], patch_run["boxes"]) <= trained - 0.5
    # The regions each marks as most important are mostly different ones.
    assert np.mean([_top_overlap(a, b) for a, b in zip(maps, rand)]) < 0.6
    if method == "gradcam":  # Grad-CAM++'s non-negative weights keep a likeness of plain activation energy
        assert np.mean([_rank_corr(a, b) for a, b in zip(maps, rand)]) < 0.5


def test_explain_cli_writes_overlays_and_arrays_for_a_chosen_class(patch_run: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    best = patch_run["run"].best
    src = patch_run["root"] / "val" / "0"
    out = tmp_path / "ex"
    assert main(["explain", "--model", str(best), "--source", str(src), "--class", "1", "--out", str(out),
                 "--device", "cpu"]) == 0
    report = json.loads((out / "explain.json").read_text())
    assert report["layer"] == "stages" and report["method"] == "gradcam" and len(report["items"]) == 16
    item = report["items"][0]
    assert item["target"] == "1" and item["label"] in ("0", "1")
    arr = np.load(out / item["npy"], allow_pickle=False)
    assert arr.shape == (SIZE, SIZE) and arr.dtype == np.float32
    with Image.open(out / item["png"]) as png:
        assert png.mode == "RGB" and png.size[0] >= 128
    # Explaining the other class gives another map than the predicted one.
    own = pigeon.explain(best, str(src), save=False, verbose=False, device="cpu")
    other = pigeon.explain(best, str(src), target="1", save=False, verbose=False, device="cpu")
    assert not np.allclose(own.maps, other.maps)
    assert main(["explain", "--model", str(best), "--source", str(src), "--class", "cat", "--out",
                 str(out)]) == 2
    assert main(["explain", "--model", str(best), "--source", str(src), "--layer", "stages.9", "--out",
                 str(out)]) == 2


@pytest.mark.parametrize("name, expected", [("tv:resnet18", "layer4"), ("timm:resnet18", "layer4")])
def test_the_last_convolutional_stage_is_found_in_timm_and_torchvision_models(name: str, expected: str) -> None:
    model = create_model(name, num_classes=3, in_chans=3, imgsz=64).eval()
    x = torch.randn(2, 3, 64, 64)
    assert find_layer(model, x) == expected
    maps, logits, layer = pigeon.engine.saliency.cam(model, x, method="gradcam++")
    assert layer == expected and maps.shape == (2, 64, 64) and logits.shape == (2, 3)


def test_a_model_without_a_feature_map_is_refused_with_the_fix() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(pigeon.ConfigError, match="--layer"):
        find_layer(model, torch.randn(1, 1, 8, 8))


def test_misclassified_images_get_an_overlay_row(tiny_clf: Any) -> None:
    from pigeon.engine.saliency import misclassified_overlays

    clf = tiny_clf
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 1, 16, 16), dtype=np.uint8)
    preds = clf.probabilities(images).argmax(1)
    labels = preds.copy()
    labels[[1, 4]] = (preds[[1, 4]] + 1) % 3  # two "wrong" predictions
    rows = misclassified_overlays(clf.model, images, labels, preds, list(clf.classes), clf.preprocess,
                                  clf.device, limit=5)
    assert len(rows) == 2 and rows[0][0].dtype == np.uint8 and rows[0][0].shape[2] == 3
    assert rows[0][1].startswith(f"Grad-CAM: {clf.classes[preds[1]]}")
