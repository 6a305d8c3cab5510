"""Run folders as the app shows them: the list, one run's report, its mistakes, downloads and exports.

Runs are read from disk, never copied into the database, so a run trained with `pigeon train --project
<home>/runs/train` shows up like one made in the app. The validation images are rebuilt exactly as training
held them out (same data, resolved preprocessing, val fraction and seed), so a confusion-matrix cell opens the
very images it counts.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.serve.errors import ApiError

_predictions: dict[tuple[str, float], dict[str, Any]] = {}  # (run dir, best mtime) -> val images + predictions
_lock = threading.Lock()


def run_dir(runs_dir: Path, name: str) -> Path:
    path = (runs_dir / name).resolve()
    if path.parent != runs_dir.resolve() or not (path / "config.json").is_file():
        raise ApiError(404, "not_found", f"no run {name!r} under {runs_dir}; GET /api/v1/runs lists them")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    from pigeon import api

    if not runs_dir.is_dir():
        return []
    out = []
    for run in api.runs(str(runs_dir)):
        run = {k: v for k, v in run.items() if k not in ("config", "rows")}
        run["best"] = (Path(run["path"]) / "weights" / "best.safetensors").is_file()
        out.append(run)
    return sorted(out, key=lambda r: Path(r["path"]).stat().st_mtime, reverse=True)


def files_of(folder: Path, name: str) -> list[dict[str, Any]]:
    weights = folder / "weights"
    found = sorted(p for p in weights.iterdir() if p.is_file() and p.suffix in (".safetensors", ".onnx",
                                                                                   ".torchscript", ".json")
                   ) if weights.is_dir() else []
    found += sorted(p for p in weights.glob("*_openvino/*") if p.is_file()) if weights.is_dir() else []
    return [{"file": str(p.relative_to(folder)), "bytes": p.stat().st_size,
             "url": f"/api/v1/runs/{name}/files/{p.relative_to(folder)}"} for p in found]


def detail(runs_dir: Path, name: str) -> dict[str, Any]:
    from pigeon.experiments import is_run, read_run

    folder = run_dir(runs_dir, name)
    # the same reading as `pigeon runs` and `pigeon compare`; a job before its first epoch has no rows yet
    run = read_run(folder) if is_run(folder) else {"config": _read_json(folder / "config.json") or {}, "rows": []}
    rows, config = run["rows"], run["config"]
    summary = _read_json(folder / "summary.json") or {}
    report = summary.get("val_report") or summary.get("test_report")
    classes = None
    meta = _read_json(folder / "weights" / "best.meta.json")
    if meta:
        classes = meta.get("classes")
    return {"name": name, "path": str(folder), "config": config, "rows": rows, "summary": summary,
            "report": report, "report_split": "val" if summary.get("val_report") else "test",
            "classes": classes, "files": files_of(folder, name), "finished": bool(summary)}


def _val_predictions(folder: Path) -> dict[str, Any]:
    """The run's evaluation images and the best model's predictions on them, computed once per checkpoint."""
    best = folder / "weights" / "best.safetensors"
    if not best.is_file():
        raise ApiError(409, "conflict", f"run {folder.name} has no best.safetensors yet; wait for its first epoch")
    key = (str(folder), best.stat().st_mtime)
    with _lock:
        if key in _predictions:
            return _predictions[key]
    from pigeon import api
    from pigeon.data import load_dataset, with_validation

    cfg = json.loads((folder / "config.json").read_text())
    clf = api.load(best)
    if clf.thresholds is not None:
        raise ApiError(409, "conflict", f"run {folder.name} is multi-label: it has no single predicted class per image "
                       "to gather mistakes by; see its report (summary.json) or `pigeon val`")
    spec = clf.preprocess
    ds = with_validation(load_dataset(cfg["data"], imgsz=spec.imgsz, channels=spec.channels, resize=spec.resize,
                                      cache_dir=cfg.get("cache_dir"), verbose=False), cfg["val_fraction"],
                         cfg["seed"])
    split_name = "val" if "val" in ds.splits else "test"
    split = ds.splits[split_name]
    images = np.asarray(split.images)
    to_model = np.array([list(clf.classes).index(c) for c in ds.classes])
    labels = to_model[np.asarray(split.labels)]
    probs = np.concatenate([clf.probabilities(images[i:i + 256]) for i in range(0, len(images), 256)])
    result = {"images": images, "labels": labels, "pred": probs.argmax(1), "conf": probs.max(1),
              "classes": list(clf.classes), "split": split_name}
    with _lock:
        _predictions[key] = result
    return result


def _items(name: str, p: dict[str, Any], index: np.ndarray) -> list[dict[str, Any]]:
    classes = p["classes"]
    return [{"index": int(i), "true": classes[int(p["labels"][i])], "pred": classes[int(p["pred"][i])],
             "confidence": round(float(p["conf"][i]), 4), "thumb": f"/api/v1/runs/{name}/images/{int(i)}"}
            for i in index]


def misclassified(runs_dir: Path, name: str, limit: int) -> list[dict[str, Any]]:
    p = _val_predictions(run_dir(runs_dir, name))
    wrong = np.flatnonzero(p["pred"] != p["labels"])
    order = wrong[np.argsort(p["conf"][wrong], kind="stable")]  # least confident first
    return _items(name, p, order[:limit])


def cell(runs_dir: Path, name: str, true: int, pred: int, limit: int) -> list[dict[str, Any]]:
    p = _val_predictions(run_dir(runs_dir, name))
    k = len(p["classes"])
    if not (0 <= true < k and 0 <= pred < k):
        raise ApiError(422, "bad_parameter", f"true and pred must be class indices 0..{k - 1}")
    index = np.flatnonzero((p["labels"] == true) & (p["pred"] == pred))
    return _items(name, p, index[np.argsort(p["conf"][index], kind="stable")][:limit])


def image_png(runs_dir: Path, name: str, index: int) -> bytes:
    from pigeon.serve.datasets import thumbnail

    p = _val_predictions(run_dir(runs_dir, name))
    if not 0 <= index < len(p["images"]):
        raise ApiError(404, "not_found", f"run {name} has {len(p['images'])} {p['split']} images; no index {index}")
    buf = io.BytesIO()
    thumbnail(p["images"][index]).save(buf, format="PNG")
    return buf.getvalue()


def file_path(runs_dir: Path, name: str, rel: str) -> Path:
    folder = run_dir(runs_dir, name)
    path = (folder / rel).resolve()
    if folder not in path.parents or not path.is_file():
        raise ApiError(404, "not_found", f"{rel!r} is not a file of run {name}")
    return path


def export(runs_dir: Path, name: str, fmt: str, int8: bool) -> dict[str, Any]:
    from pigeon import api
    from pigeon.errors import PigeonError

    folder = run_dir(runs_dir, name)
    best = folder / "weights" / "best.safetensors"
    if not best.is_file():
        raise ApiError(409, "conflict", f"run {name} has no best.safetensors to export yet")
    try:
        result = api.export(str(best), format=fmt, int8=int8, verbose=False)
    except PigeonError as err:
        raise ApiError(422, "export_failed", str(err)) from None
    path = Path(result.path)
    rel = path.relative_to(folder)
    target = next((p for p in sorted(path.glob("*.xml"))), path) if path.is_dir() else path
    return {"format": fmt, "int8": int8, "file": str(rel), "parity": result.parity,
            "url": f"/api/v1/runs/{name}/files/{target.relative_to(folder)}"}


def compare(runs_dir: Path, names: list[str]) -> list[dict[str, Any]]:
    return [detail(runs_dir, n) for n in names]
