"""Multi-label on real images: 2x2 mosaics of Fashion-MNIST items, labelled with the classes they show.

Each 56x56 mosaic has four cells; each cell holds a Fashion-MNIST image (or stays blank, 30% of the time, never
all four), and the mosaic's labels are the distinct classes in it. Training mosaics are cut from the training
split, test mosaics from the test split only. They are written as PNG files with a labels CSV (file,labels,split),
as a user would bring them, and trained with the real command line and the default options:

    pigeon train --data mosaics/labels.csv

The run holds out 10% of train for validation, where it picks the best epoch and fits each class's threshold;
the table reports the test split. Beside the fitted thresholds it shows the same model at 0.5 for every class,
which is what a plain sigmoid classifier answers. No peer has a one-command multi-label classifier to compare
with (Ultralytics' classify task is single-label).

    python benchmarks/multilabel.py                     # 8,000 train / 2,000 test mosaics, seed 0
    python benchmarks/multilabel.py --train 20000 --seeds 0 1
    python benchmarks/multilabel.py --quick             # 300 / 100 mosaics, 1 epoch, nothing saved (tests)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import cpu_flags, run_timed, save, spread

BLANK = 0.3


def mosaics(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """n uint8 [56, 56] mosaics of 28x28 items and each one's sorted classes."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 56, 56), dtype=np.uint8)
    sets: list[list[int]] = []
    for i in range(n):
        cells = rng.random(4) >= BLANK
        if not cells.any():
            cells[rng.integers(4)] = True
        present = set()
        for cell in np.flatnonzero(cells):
            pick = int(rng.integers(len(labels)))
            r, c = divmod(int(cell), 2)
            out[i, r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] = images[pick, 0]
            present.add(int(labels[pick]))
        sets.append(sorted(present))
    return out, sets


def write_dataset(root: Path, n_train: int, n_test: int, seed: int) -> tuple[Path, list[str]]:
    from PIL import Image

    from pigeon.data import load_dataset

    ds = load_dataset("fashion-mnist", verbose=False)
    classes = [c.replace("/", "-") for c in ds.classes]
    (root / "img").mkdir(parents=True)
    rows = []
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
        part = ds.splits[split]
        arrays, sets = mosaics(np.asarray(part.images), np.asarray(part.labels), n, seed * 10 + offset)
        for i, (arr, present) in enumerate(zip(arrays, sets)):
            name = f"img/{split}_{i:05d}.png"
            Image.fromarray(arr, mode="L").save(root / name)
            rows.append([name, ";".join(classes[k] for k in present), split])
    path = root / "labels.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "labels", "split"], *rows])
    return path, classes


def at_half(best: Path, data: Path, cache: str | None) -> dict:
    """The same model's test report with every threshold at 0.5."""
    import pigeon
    from pigeon.data import load_dataset
    from pigeon.data.dataset import to_model_labels
    from pigeon.metrics import multilabel_report

    clf = pigeon.load(best, device="cpu")
    spec = clf.preprocess
    ds = load_dataset(str(data), imgsz=spec.imgsz, channels=spec.channels, resize=spec.resize, verbose=False,
                      cache_dir=cache)
    test = ds.splits["test"]
    logits = clf.logits(np.asarray(test.images))
    return multilabel_report(logits, to_model_labels(np.asarray(test.labels), ds.classes, list(clf.classes)),
                             list(clf.classes))


FIGURES = ("map", "micro_f1", "macro_f1", "exact_match", "hamming_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=8000, help="training mosaics (10%% become val)")
    parser.add_argument("--test", type=int, default=2000, help="test mosaics")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--quick", action="store_true", help="300 / 100 mosaics, 1 epoch, one seed, nothing saved")
    args = parser.parse_args()
    n_train, n_test, seeds = (300, 100, args.seeds[:1]) if args.quick else (args.train, args.test, args.seeds)
    runs = []
    with tempfile.TemporaryDirectory() as work:
        data, _ = write_dataset(Path(work) / "mosaics", n_train, n_test, seed=0)
        for seed in seeds:
            name = f"mosaics-{seed}"
            cmd = [sys.executable, "-m", "pigeon", "train", "--data", str(data), "--seed", str(seed), "--project",
                   str(Path(work) / "runs"), "--name", name, "--no-verbose", "--no-plots",
                   "--cache-dir", str(Path(work) / "cache"), *(["--epochs", "1"] if args.quick else [])]
            wall, out = run_timed(cmd)
            run_dir = Path(json.loads(out.strip().splitlines()[-1])["run_dir"])
            summary = json.loads((run_dir / "summary.json").read_text())
            test = summary["test_report"]
            half = at_half(run_dir / "weights" / "best.safetensors", data, str(Path(work) / "cache"))
            config = json.loads((run_dir / "config.json").read_text())
            runs.append({"seed": seed, "wall_seconds": round(wall, 1), "epochs": summary["epochs_run"],
                         "model": config["model"], "imgsz": config["imgsz"],
                         "fitted": {k: test[k] for k in FIGURES}, "at_0.5": {k: half[k] for k in FIGURES},
                         "labels_per_image": test["labels_per_image"],
                         "predicted_per_image": {"fitted": test["predicted_per_image"],
                                                 "at_0.5": half["predicted_per_image"]},
                         "worst_class": test["worst_class"], "per_class_ap": {r["class"]: r["ap"]
                                                                            for r in test["per_class"]}})
            r = runs[-1]
            print(f"seed {seed}: test mAP {r['fitted']['map']:.2%}, micro-F1 {r['fitted']['micro_f1']:.2%} "
                  f"(thresholds at 0.5: {r['at_0.5']['micro_f1']:.2%}), exact match {r['fitted']['exact_match']:.2%}"
                  f" in {wall:.0f}s", flush=True)
    if args.quick:
        return
    names = {"map": "mAP", "micro_f1": "micro-F1", "macro_f1": "macro-F1", "exact_match": "exact match",
             "hamming_accuracy": "Hamming accuracy"}
    rows = ["| test figure | thresholds fitted on val (pigeon's default) | every threshold 0.5 |", "|---|---|---|"]
    for key, label in names.items():
        fitted, half = spread([r["fitted"][key] for r in runs]), spread([r["at_0.5"][key] for r in runs])
        rows.append(f"| {label} | {fitted['mean']:.2%} | {half['mean']:.2%} |"
                    if len(runs) == 1 else
                    f"| {label} | {fitted['mean']:.2%} ({fitted['min']:.2%}-{fitted['max']:.2%}) | "
                    f"{half['mean']:.2%} ({half['min']:.2%}-{half['max']:.2%}) |")
    first = runs[0]
    worst = first["worst_class"]
    rows += ["", f"{n_train:,} training mosaics ({n_train // 10:,} held out for val) and {n_test:,} test mosaics, "
             f"56x56 grey, {first['labels_per_image']:.2f} labels per image; the default recipe "
             f"({first['model']}, {first['epochs']} epochs, imgsz {first['imgsz']}); "
             f"seeds {', '.join(map(str, seeds))}; "
             f"wall {spread([r['wall_seconds'] for r in runs])['median']:.0f} s per run (median). mAP does not depend "
             f"on thresholds. Worst class (seed {first['seed']}): {worst['class']} (AP {worst['ap']:.2%}). "
             f"CPU flags: {cpu_flags()}."]
    save("multilabel", {"runs": runs, "train": n_train, "test": n_test, "blank": BLANK}, "\n".join(rows))


if __name__ == "__main__":
    main()
