"""Long-tailed Fashion-MNIST: balanced accuracy with `--balance none`, `weights` and `sampler`, over seeds.

The training split is made long-tailed with an exponential profile, 100:1: class k (in Fashion-MNIST's own
order) keeps the first round(6000 * 0.01 ** (k / 9)) of its training images, 6,000 down to 60 (14,891 in
all). The test split is Fashion-MNIST's own, 1,000 per class, so balanced accuracy is plain accuracy there.
Every run is the real command line with the default recipe, the model chosen on the 10% of the long-tailed
train held out for validation (itself long-tailed), never on test.

    python benchmarks/imbalance.py                 # 3 modes x 2 seeds (about 6 minutes on a bf16 CPU)
    python benchmarks/imbalance.py --seeds 0 1 2
    python benchmarks/imbalance.py --quick         # digits at 10:1, 1 epoch, nothing saved (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import cpu_flags, run_timed, save, spread, write_png_folder

MODES = ("none", "weights", "sampler")


def long_tailed(labels: np.ndarray, num_classes: int, largest: int, ratio: float) -> np.ndarray:
    """Indices that keep round(largest * (1/ratio) ** (k / (K-1))) images of class k, the first ones."""
    keep = []
    for k in range(num_classes):
        n = round(largest * (1 / ratio) ** (k / (num_classes - 1)))
        keep.append(np.flatnonzero(labels == k)[:n])
    return np.concatenate(keep)


def write_data(root: Path, quick: bool) -> tuple[Path, list[int]]:
    from pigeon.data import load_dataset

    ds = load_dataset("digits" if quick else "fashion-mnist", verbose=False)
    train, test = ds.splits["train"], ds.splits["test"]
    labels = np.asarray(train.labels)
    largest, ratio = (int(np.bincount(labels).min()), 10.0) if quick else (6000, 100.0)
    keep = long_tailed(labels, len(ds.classes), largest, ratio)
    classes = [c.replace("/", "-") for c in ds.classes]
    write_png_folder(root, classes, {"train": (np.asarray(train.images)[keep], labels[keep]),
                                     "test": (np.asarray(test.images), np.asarray(test.labels))})
    return root, np.bincount(labels[keep], minlength=len(classes)).tolist()


def run(data: Path, mode: str, seed: int, project: str, epochs: str | None) -> dict:
    cmd = [sys.executable, "-m", "pigeon", "train", "--data", str(data), "--balance", mode, "--seed", str(seed),
           "--project", project, "--name", f"{mode}-{seed}", "--no-verbose", "--no-plots",
           *(["--epochs", epochs] if epochs else [])]
    wall, out = run_timed(cmd)
    summary = json.loads(out.strip().splitlines()[-1])
    report = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["test_report"]
    return {"mode": mode, "seed": seed, "wall_seconds": round(wall, 1), "top1": report["top1"],
            "balanced_accuracy": report["balanced_accuracy"], "worst_class": report["worst_class"],
            "tail_recall": report["per_class"][-1]["recall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="digits at 10:1, 1 epoch, nothing saved")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        data, counts = write_data(Path(work) / "data", args.quick)
        print(f"training images per class: {counts}", flush=True)
        runs = []
        for seed in args.seeds[:1] if args.quick else args.seeds:
            for mode in MODES:
                runs.append(run(data, mode, seed, str(Path(work) / "runs"), "1" if args.quick else None))
                r = runs[-1]
                print(f"{mode} seed {seed}: balanced accuracy {r['balanced_accuracy']:.2%}, top-1 {r['top1']:.2%}, "
                      f"rarest class recall {r['tail_recall']:.2%} ({r['wall_seconds']}s)", flush=True)
    if args.quick:
        return
    rows = ["| `--balance` | seeds | test balanced accuracy (mean, min-max) | rarest class recall (mean) | "
            "worst class (seed 0) | wall s (median) |", "|---|---|---|---|---|---|"]
    summary = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        acc = spread([r["balanced_accuracy"] for r in mine])
        tail = spread([r["tail_recall"] for r in mine])
        summary[mode] = {"balanced_accuracy": acc, "tail_recall": tail}
        worst = mine[0]["worst_class"]
        rows.append(f"| {mode} | {acc['n']} | {acc['mean']:.2%} ({acc['min']:.2%}-{acc['max']:.2%}) | "
                    f"{tail['mean']:.2%} | {worst['class']} ({worst['recall']:.1%}) | "
                    f"{spread([r['wall_seconds'] for r in mine])['median']:.0f} |")
    rows.append(f"\nFashion-MNIST train made long-tailed 100:1 (exponential; {counts[0]} down to {counts[-1]} images "
                f"per class, {sum(counts)} in all), its balanced test split of 10,000; default recipe otherwise. "
                f"CPU flags: {cpu_flags()}.")
    save("imbalance", {"counts": counts, "runs": runs, "summary": summary}, "\n".join(rows))


if __name__ == "__main__":
    main()
