"""Does `pigeon audit` find what is wrong with a dataset? Recall on planted duplicates, leaks and label flips.

For each dataset, write its images as an image folder (train/ and test/, stratified), then plant, with a seed,
on images chosen disjointly:
  - K exact duplicates within train (a byte copy under a new name in the same class folder),
  - K near duplicates within train (a re-encoded or edited copy: JPEG quality 90, 1 px larger, brightness +12,
    contrast x0.9, or scaled to 75%),
  - K cross-split leaks (a train image copied into test: half byte copies, half edited copies),
  - K label flips (an image moved to a different, randomly chosen class folder),
then run `pigeon audit` with its default settings and count which planted issues it reports: a duplicate is
found when the original and its copy are in one group (of the right kind), a leak when that group is also
flagged as spanning splits, a flip when the moved image is among the label-error candidates.

    python benchmarks/audit.py            # digits (1,797 at 32 px) and a 3,000-image Fashion-MNIST subset, K=50
    python benchmarks/audit.py --quick    # a tiny smoke run on digits (used by the tests); nothing is saved
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import save

import pigeon

EDITS = ("jpeg90", "resize+1px", "brightness+12", "contrast0.9", "scale75%")


def digits_images() -> tuple[list[Any], np.ndarray, tuple[str, ...]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = [Image.fromarray(p, "L").resize((32, 32), Image.BILINEAR) for p in pixels]
    return images, bunch.target.astype(np.int64), tuple(str(d) for d in range(10))


def fashion_images(n: int, seed: int) -> tuple[list[Any], np.ndarray, tuple[str, ...]]:
    from PIL import Image

    from pigeon.data.builtins import FASHION_CLASSES, fashion_mnist

    splits, _, _ = fashion_mnist(None, False)
    pick = np.sort(np.random.default_rng(seed).choice(len(splits["train"]), size=n, replace=False))
    images = [Image.fromarray(np.asarray(splits["train"].images[i][0]), "L") for i in pick]
    names = tuple(c.replace("/", "-").replace(" ", "-").lower() for c in FASHION_CLASSES)
    return images, np.asarray(splits["train"].labels)[pick], names


def edit(img: Any, kind: str) -> tuple[bytes, str]:
    """An edited copy of a PIL image as file bytes, with the extension to save it under."""
    from PIL import Image, ImageEnhance

    buf = io.BytesIO()
    if kind == "jpeg90":
        img.convert("RGB").save(buf, "JPEG", quality=90)
        return buf.getvalue(), ".jpg"
    if kind == "resize+1px":
        out = img.resize((img.width + 1, img.height + 1), Image.BILINEAR)
    elif kind == "brightness+12":
        out = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + 12, 0, 255).astype(np.uint8), img.mode)
    elif kind == "contrast0.9":
        out = ImageEnhance.Contrast(img).enhance(0.9)
    elif kind == "scale75%":
        out = img.resize((round(img.width * 0.75), round(img.height * 0.75)), Image.LANCZOS)
    else:
        raise ValueError(kind)
    out.save(buf, "PNG")
    return buf.getvalue(), ".png"


def write_folder(root: Path, images: list[Any], labels: np.ndarray, classes: tuple[str, ...],
                 test_fraction: float, seed: int) -> dict[int, Path]:
    from pigeon.data.dataset import stratified_split

    _, test_idx = stratified_split(labels, test_fraction, seed)
    test = set(test_idx.tolist())
    paths = {}
    for i, (img, y) in enumerate(zip(images, labels)):
        path = root / ("test" if i in test else "train") / classes[y] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        paths[i] = path
    return paths


def plant(root: Path, images: list[Any], labels: np.ndarray, classes: tuple[str, ...], paths: dict[int, Path],
          k: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Plant k issues of each kind on disjoint images; return what was planted, as paths relative to root."""
    rng = np.random.default_rng(seed)
    train = [i for i, p in paths.items() if p.parts[-3] == "train"]
    chosen = rng.choice(train, size=4 * k, replace=False).tolist()
    groups = [chosen[j * k:(j + 1) * k] for j in range(4)]
    rel = {i: p.relative_to(root).as_posix() for i, p in paths.items()}
    planted: dict[str, list[dict[str, Any]]] = {"exact": [], "near": [], "leak_exact": [], "leak_near": [],
                                                "flip": []}
    for n, i in enumerate(groups[0]):
        copy = paths[i].with_name(f"dup{n:03d}.png")
        shutil.copyfile(paths[i], copy)
        planted["exact"].append({"a": rel[i], "b": copy.relative_to(root).as_posix()})
    for n, i in enumerate(groups[1]):
        kind = EDITS[n % len(EDITS)]
        data, ext = edit(images[i], kind)
        copy = paths[i].with_name(f"near{n:03d}{ext}")
        copy.write_bytes(data)
        planted["near"].append({"a": rel[i], "b": copy.relative_to(root).as_posix(), "edit": kind})
    for n, i in enumerate(groups[2]):
        target = root / "test" / classes[labels[i]]
        if n % 2 == 0:
            copy = target / f"leak{n:03d}.png"
            shutil.copyfile(paths[i], copy)
            planted["leak_exact"].append({"a": rel[i], "b": copy.relative_to(root).as_posix()})
        else:
            kind = EDITS[(n // 2) % len(EDITS)]
            data, ext = edit(images[i], kind)
            copy = target / f"leak{n:03d}{ext}"
            copy.write_bytes(data)
            planted["leak_near"].append({"a": rel[i], "b": copy.relative_to(root).as_posix(), "edit": kind})
    for n, i in enumerate(groups[3]):
        wrong = int(rng.choice([c for c in range(len(classes)) if c != labels[i]]))
        moved = root / "train" / classes[wrong] / f"moved{n:03d}.png"
        shutil.move(paths[i], moved)
        planted["flip"].append({"path": moved.relative_to(root).as_posix(), "true": classes[labels[i]],
                                "given": classes[wrong]})
    return planted


def together(groups: list[dict[str, Any]], a: str, b: str, cross: bool | None = None) -> bool:
    for g in groups:
        members = {f["path"] for f in g["files"]}
        if a in members and b in members:
            return cross is None or g["cross_split"] == cross
    return False


def score(report: dict[str, Any], planted: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    found = {
        "exact": [together(exact, p["a"], p["b"], cross=False) for p in planted["exact"]],
        "near": [together(near, p["a"], p["b"], cross=False) for p in planted["near"]],
        "leak_exact": [together(exact, p["a"], p["b"], cross=True) for p in planted["leak_exact"]],
        "leak_near": [together(near, p["a"], p["b"], cross=True) for p in planted["leak_near"]],
    }
    cands = [c["path"] for c in report["label_check"]["candidates"]]
    flips = {p["path"] for p in planted["flip"]}
    found["flip"] = [p["path"] in cands for p in planted["flip"]]
    out: dict[str, Any] = {kind: {"found": int(sum(v)), "planted": len(v), "recall": sum(v) / max(1, len(v))}
                           for kind, v in found.items()}
    missed_edits = [p["edit"] for kind in ("near", "leak_near") for p, ok in zip(planted[kind], found[kind])
                    if not ok]
    planted_pairs = {frozenset((p["a"], p["b"])) for kind in planted if kind != "flip" for p in planted[kind]}
    out["near_missed_edits"] = missed_edits
    out["unplanted_groups"] = {
        key: sum(1 for g in report[key] if not any(pair <= {f["path"] for f in g["files"]} for pair in planted_pairs))
        for key in ("exact_duplicates", "near_duplicates")}
    k = len(flips)
    out["label_candidates"] = len(cands)
    out["label_precision"] = sum(c in flips for c in cands) / max(1, len(cands))
    out["label_precision_at_k"] = sum(c in flips for c in cands[:k]) / max(1, min(k, len(cands)))
    out["out_of_fold_top1"] = report["label_check"].get("out_of_fold_top1")
    return out


def run_one(name: str, images: list[Any], labels: np.ndarray, classes: tuple[str, ...], k: int, seed: int,
            work: Path, options: dict[str, Any]) -> dict[str, Any]:
    root = work / name
    paths = write_folder(root, images, labels, classes, 0.25, seed)
    planted = plant(root, images, labels, classes, paths, k, seed)
    start = time.perf_counter()
    result = pigeon.audit(str(root), out=str(work / f"{name}-report"), verbose=False, seed=seed, **options)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    pigeon.audit(str(root), out=str(work / f"{name}-report-fast"), verbose=False, label_check=False)
    fast = time.perf_counter() - start
    s = score(result.report, planted)
    s.update({"images": result.report["counts"]["images"], "k": k, "seconds": round(seconds, 1),
              "seconds_without_label_check": round(fast, 1), "planted": planted})
    line = ", ".join(f"{kind} {s[kind]['found']}/{s[kind]['planted']}"
                     for kind in ("exact", "near", "leak_exact", "leak_near", "flip"))
    print(f"{name}: {line}; label candidates {s['label_candidates']}, precision {s['label_precision']:.0%}, "
          f"out-of-fold top-1 {s['out_of_fold_top1']:.1%}; unplanted groups {s['unplanted_groups']}; "
          f"{seconds:.0f}s ({fast:.1f}s without the label check)", flush=True)
    return s


def pct(d: dict[str, Any]) -> str:
    return f"{d['recall']:.0%} ({d['found']}/{d['planted']})"


def table(results: dict[str, dict[str, Any]], k: int) -> str:
    rows = ["| dataset | images | exact duplicates | near duplicates | cross-split leaks (exact / near) | "
            f"label flips found | planted flips among the top {k} candidates | candidates listed | "
            "other groups reported | audit time (without label check) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        other = s["unplanted_groups"]
        rows.append(f"| {name} | {s['images']} | {pct(s['exact'])} | {pct(s['near'])} | {pct(s['leak_exact'])} / "
                    f"{pct(s['leak_near'])} | {pct(s['flip'])} | {s['label_precision_at_k']:.0%} | "
                    f"{s['label_candidates']} | {other['exact_duplicates']} exact, {other['near_duplicates']} near "
                    f"| {s['seconds']:.0f} s ({s['seconds_without_label_check']:.1f} s) |")
    note = (f"\n\n{k} issues of each kind planted with seed 0 on disjoint images of the train split (leaks: half "
            f"byte copies, half edited copies, put in test; edits cycle through {', '.join(EDITS)}), then "
            "`pigeon audit --data <folder>` with its defaults (pigeon-n, 5 folds x 10 epochs at 32 px, confidence "
            "0.7, near threshold 0.06). Digits: all 1,797 scikit-learn digits upscaled to 32 px; Fashion-MNIST: "
            "3,000 training images at 28 px. A candidate that is not a planted flip can still be a genuine label "
            "error or an ambiguous image of the original data set. Other groups are duplicate groups that involve "
            "no planted pair (duplicates already in the data, or false alarms).")
    return "\n".join(rows) + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=50, help="issues planted of each kind")
    parser.add_argument("--fashion", type=int, default=3000, help="Fashion-MNIST images in the subset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run on digits; results not saved")
    args = parser.parse_args()
    options: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images, labels, classes = digits_images()
        if args.quick:
            keep = np.flatnonzero(labels < 4)[:240]
            images, labels, classes = [images[i] for i in keep], labels[keep], classes[:4]
            args.k, options = 4, {"epochs": 3, "folds": 3}
        results = {"digits": run_one("digits", images, labels, classes, args.k, args.seed, work, options)}
        if not args.quick:
            results["fashion-mnist"] = run_one("fashion-mnist", *fashion_images(args.fashion, args.seed), args.k,
                                               args.seed, work, options)
    if args.quick:
        return
    save("audit", {"k": args.k, "seed": args.seed, "fashion_subset": args.fashion, "results": results},
         table(results, args.k))
    print(json.dumps({name: {kind: s[kind]["recall"] for kind in ("exact", "near", "leak_exact", "leak_near", "flip")}
                      for name, s in results.items()}))


if __name__ == "__main__":
    main()
