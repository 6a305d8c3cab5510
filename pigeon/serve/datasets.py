"""Datasets in the app: an uploaded zip, a built-in, or a folder on the server, each summarised once.

The summary is what the Data step shows: classes, images per class, up to 12 thumbnails a class, and every file
pigeon will not train on, with the reason pigeon's audit gives (corrupt, truncated, not an image, too many
pixels, outside a class folder, exact duplicate, cross-split leak). Whether the data would train is decided by
pigeon's own folder scan, so the page never promises what `pigeon train` would refuse.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.errors import PigeonError
from pigeon.serve.errors import ApiError


def builtins_here() -> list[str]:
    """The built-in datasets with a copy on this machine. The app offers only these: a download of up to
    170 MB is started from the command line (`pigeon datasets` says how), never by a form in a browser."""
    from pigeon.data.builtins import describe

    return [info.name for info in describe(None) if info.found is not None]
THUMBS = 12
THUMB_SIDE = 96


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def thumbnail(image: Any) -> Any:
    """A PIL image or a uint8 [C, H, W] array as a picture a person can see: at most THUMB_SIDE px, and tiny
    images (8x8 digits) blown up, pixel for pixel."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0)))
    img = image.convert("RGB") if image.mode not in ("L", "RGB") else image
    scale = THUMB_SIDE / max(img.size)
    if scale < 1 or max(img.size) < 32:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST
                         if max(img.size) < 32 else Image.BILINEAR)
    return img


def _save_thumb(image: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    thumbnail(image).save(path)


def _rejected(report: dict[str, Any]) -> list[dict[str, str]]:
    out = [{"file": u["path"], "reason": u["reason"]} for u in report["unreadable"]]
    for group in report["exact_duplicates"]:
        first, *rest = group["files"]
        for f in rest:
            where = "cross-split leak" if f["split"] != first["split"] else "exact duplicate"
            out.append({"file": f["path"], "reason": f"{where}: the same bytes as {first['path']}"
                        + (f" ({first['split']} and {f['split']})" if f["split"] != first["split"] else "")})
    out += [{"file": p.get("path", "") if isinstance(p, dict) else "", "reason": p.get("problem", str(p))
             if isinstance(p, dict) else str(p)} for p in report.get("layout_problems", [])]
    return out


def _outside_class_folders(root: Path, listed: set[str]) -> list[dict[str, str]]:
    """Files with no class folder above them (the audit reports these for the flat layout only)."""
    split_layout = (root / "train").is_dir()
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        parts = path.relative_to(root).parts
        labelled = len(parts) >= 3 and parts[0] in ("train", "val", "test") if split_layout else len(parts) >= 2
        rel = "/".join(parts)
        if not labelled and rel not in listed:
            out.append({"file": rel, "reason": "not inside a class folder, so it has no label; pigeon ignores it"})
    return out


def summarise_folder(root: Path, audit_dir: Path, thumbs_dir: Path, base_url: str) -> dict[str, Any]:
    """Classes, counts, thumbnails and rejected files of an image folder; trainable is pigeon's own verdict."""
    from pigeon import api
    from pigeon.data.folders import scan

    why_not = None
    try:
        classes, files, _ = scan(root)
    except PigeonError as err:
        classes, files, why_not = (), {}, str(err)
    rejected: list[dict[str, str]] = []
    try:
        audited = api.audit(str(root), label_check=False, out=str(audit_dir), thumbnails=0, verbose=False)
        rejected = _rejected(audited.report)
    except PigeonError as err:
        why_not = why_not or str(err)
    rejected += _outside_class_folders(root, {r["file"] for r in rejected})
    bad = {r["file"] for r in rejected if not r["reason"].startswith(("exact duplicate", "cross-split"))}
    per_class: list[dict[str, Any]] = []
    splits: dict[str, int] = {}
    for split, items in files.items():
        good = [(p, c) for p, c in items if str(p.relative_to(root)) not in bad]
        splits[split] = len(good)
        if split != "train":
            continue
        for c, name in enumerate(classes):
            mine = [p for p, label in good if label == c]
            thumbs = []
            for i, path in enumerate(mine[:THUMBS]):
                try:
                    from PIL import Image

                    with Image.open(path) as img:
                        img.thumbnail((1024, 1024))
                        _save_thumb(img.copy(), thumbs_dir / str(c) / f"{i}.png")
                    thumbs.append(f"{base_url}/thumbs/{c}/{i}")
                except Exception:  # noqa: BLE001 - the audit already lists files that cannot be read
                    continue
            per_class.append({"name": name, "count": len(mine), "thumbs": thumbs})
    if why_not is None:
        short = [c["name"] for c in per_class if c["count"] < 2]
        if len(per_class) < 2:
            why_not = "a classifier needs at least 2 classes (one folder of images per class)"
        elif short:
            why_not = (f"class(es) {', '.join(short)} have fewer than 2 readable images; add images or remove "
                       "those folders")
    return {"classes": per_class, "splits": splits, "rejected": rejected, "trainable": why_not is None,
            "why_not": why_not}


def summarise_builtin(name: str, thumbs_dir: Path, base_url: str) -> dict[str, Any]:
    from pigeon.data import load_dataset

    try:
        ds = load_dataset(name, verbose=False)
    except PigeonError as err:
        raise ApiError(400, "bad_dataset", str(err)) from None
    train = ds.splits["train"]
    per_class = []
    for c, cls in enumerate(ds.classes):
        idx = np.flatnonzero(train.labels == c)
        for i, j in enumerate(idx[:THUMBS]):
            _save_thumb(np.asarray(train.images[j]), thumbs_dir / str(c) / f"{i}.png")
        per_class.append({"name": cls, "count": int(len(idx)), "thumbs": [f"{base_url}/thumbs/{c}/{i}"
                                                                          for i in range(min(THUMBS, len(idx)))]})
    return {"classes": per_class, "splits": {s: len(v.labels) for s, v in ds.splits.items()}, "rejected": [],
            "trainable": True, "why_not": None}


def create(home: Path, kind: str, name: str, source: str | Path, work: Path | None = None) -> dict[str, Any]:
    """Summarise a dataset and return its record; `work` is the fresh folder an upload was unpacked into."""
    dataset_id = work.name if work is not None else new_id()
    base = f"/api/v1/datasets/{dataset_id}"
    thumbs = home / "thumbs" / dataset_id
    if kind == "builtin":
        from pigeon.data.builtins import BUILTINS

        here = builtins_here()
        if source not in BUILTINS:
            raise ApiError(422, "bad_parameter", f"builtin={source!r} is not a built-in dataset; choose one of "
                           f"{', '.join(here)}")
        if source not in here:
            raise ApiError(422, "bad_parameter", f"builtin={source!r} is not on this machine, and the app downloads "
                           f"nothing: run `pigeon train --data {source} --epochs 1` once (it downloads and checks "
                           f"it), or see `pigeon datasets` for where a copy is looked for")
        summary = summarise_builtin(str(source), thumbs, base)
        path = str(source)
    else:
        root = Path(source).expanduser()
        if not root.is_absolute():
            raise ApiError(422, "bad_parameter", f"path={str(source)!r} must be an absolute folder path on the "
                           "server, e.g. /data/xrays")
        if not root.is_dir():
            raise ApiError(404, "not_found", f"{root}: no such folder on the server")
        with tempfile.TemporaryDirectory(dir=home) as audit_dir:
            summary = summarise_folder(root, Path(audit_dir) / "audit", thumbs, base)
        path = str(root)
        if kind == "upload" and summary["why_not"]:  # name the upload, not the folder it was unpacked into
            summary["why_not"] = summary["why_not"].replace(path, name)
    return {"id": dataset_id, "name": name, "kind": kind, "path": path, "created": time.time(), **summary}


def remove(home: Path, record: dict[str, Any]) -> None:
    shutil.rmtree(home / "thumbs" / record["id"], ignore_errors=True)
    if record["kind"] == "upload":
        shutil.rmtree(home / "datasets" / record["id"], ignore_errors=True)
