"""Are pigeon's augmentation and size defaults good on data it has not seen? A small grid at equal epochs.

Writes two held-out folders of real images as PNGs, each with train/ and test/ (no val/: pigeon holds out
10% of train, chooses the best epoch there, and the figure is test top-1):
  - digits: scikit-learn's 1,797 8x8 handwritten digits (70% train / 30% test, stratified), small glyphs;
  - fashion: a Fashion-MNIST subset at 28x28 grayscale (items of clothing), 4,000 train / 1,000 test.
Then trains pigeon-n on each with the defaults and with each setting of a flip x crop grid at the native
size, plus the old 64 px folder default, every run for the same epochs (digits 15, fashion 6), with its wall
time reported beside it. (Equal epochs, not `--time`: on folders this small the pace after the first epoch is
mostly start-up, so a time budget would plan very different runs from one start to the next.)

    python benchmarks/defaults.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import cpu_flags, save, write_png_folder

SETTINGS: dict[str, list[str]] = {
    "defaults": [],
    "no flip, no crop": ["--fliplr", "0", "--no-resized-crop"],
    "flip, no crop": ["--fliplr", "0.5", "--no-resized-crop"],
    "no flip, resized crop": ["--fliplr", "0", "--resized-crop"],
    "flip, resized crop": ["--fliplr", "0.5", "--resized-crop"],
    "64 px (the old folder default)": ["--imgsz", "64"],
}
QUICK = ("defaults", "no flip, no crop")


def _split(labels: np.ndarray, test: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = round(len(idx) * test)
        held += list(idx[:cut])
        train += list(idx[cut:])
    return np.sort(train), np.sort(held)


def write_folders(root: Path, quick: bool) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    from pigeon.data import load_dataset

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    tr, te = _split(bunch.target, 0.3)
    if quick:
        tr, te = tr[::6], te[::6]
    names = [str(d) for d in range(10)]
    out = {"digits": write_png_folder(root / "digits", names, {"train": (images[tr], bunch.target[tr]),
                                                                "test": (images[te], bunch.target[te])})}
    fm = load_dataset("fashion-mnist", verbose=False)
    n_train, n_test = (400, 200) if quick else (4000, 1000)
    train, test = fm.splits["train"], fm.splits["test"]
    out["fashion"] = write_png_folder(root / "fashion", list(fm.classes), {
        "train": (train.images[:n_train], train.labels[:n_train]),
        "test": (test.images[:n_test], test.labels[:n_test])})
    return out


EPOCHS = {"digits": 15, "fashion": 6}


def run(data: Path, flags: list[str], epochs: int, work: Path, name: str) -> dict[str, Any]:
    from pigeon.cli import main

    argv = ["train", "--data", str(data), "--epochs", str(epochs), "--device", "cpu",
            "--no-plots", "--no-verbose", "--project", str(work / "runs"), "--name", name,
            "--cache-dir", str(work / "cache"), *flags]
    if main(argv) != 0:
        raise RuntimeError(f"pigeon {' '.join(argv)} failed")
    folder = work / "runs" / name
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    return {"test_top1": summary["test"]["top1"], "epochs": summary["epochs_run"], "seconds": summary["seconds"],
            "imgsz": config["imgsz"], "fliplr": config["fliplr"], "resized_crop": config["resized_crop"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny folders, two settings, one epoch: a smoke test")
    parser.add_argument("--out", help="write JSON here instead of benchmarks/results (the smoke test uses it)")
    args = parser.parse_args()
    settings = {k: v for k, v in SETTINGS.items() if not args.quick or k in QUICK}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for dataset, folder in write_folders(work / "data", args.quick).items():
            for i, (setting, flags) in enumerate(settings.items()):
                row = {"dataset": dataset, "setting": setting, "flags": " ".join(flags) or "(none)",
                       **run(folder, flags, 1 if args.quick else EPOCHS[dataset], work, f"{dataset}-{i}")}
                rows.append(row)
                print(f"{dataset:<8} {setting:<32} test top-1 {row['test_top1']:.2%}  {row['epochs']} epochs  "
                      f"{row['seconds']:.0f} s  (imgsz {row['imgsz']}, fliplr {row['fliplr']}, "
                      f"resized crop {row['resized_crop']})", flush=True)
    verdicts = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        best = max(mine, key=lambda r: r["test_top1"])
        default = next(r for r in mine if r["setting"] == "defaults")
        gap = best["test_top1"] - default["test_top1"]
        verdicts.append({"dataset": dataset, "best": best["setting"], "gap_points": 100 * gap,
                         "defaults_within_1_point": gap <= 0.01})
    table = ["| data | setting | flags | resolved (imgsz, fliplr, resized crop) | test top-1 | epochs | wall s |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['dataset']} | {r['setting']} | `{r['flags']}` | {r['imgsz']}, {r['fliplr']}, "
              f"{'on' if r['resized_crop'] else 'off'} | {r['test_top1']:.2%} | {r['epochs']} | {r['seconds']:.0f} |"
              for r in rows]
    table.append("")
    table += [f"- {v['dataset']}: best is \"{v['best']}\"; the defaults are {v['gap_points']:.1f} points below it "
              f"({'within' if v['defaults_within_1_point'] else 'NOT within'} 1 point)." for v in verdicts]
    table.append(f"\npigeon-n, one seed, default options besides those shown, on a shared 2-core CPU (flags: "
                 f"{cpu_flags()}; wall times vary with the other load); test top-1 of the epoch chosen on the 10% "
                 "held out of train.")
    payload = {"rows": rows, "verdicts": verdicts, "epochs": EPOCHS, "quick": args.quick}
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2))
    else:
        save("defaults", payload, "\n".join(table))
    print("\n".join(table[-len(verdicts) - 2:]), file=sys.stderr)


if __name__ == "__main__":
    main()
