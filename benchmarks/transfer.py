"""Does pretraining help? pigeon-s pretrained on Fashion-MNIST, fine-tuned on 10 digits per class, vs scratch.

1. Pretrain pigeon-s on Fashion-MNIST (or reuse a checkpoint given with --pretrained).
2. For each seed, draw 10 images per class from scikit-learn digits' train split (a different draw per seed)
   and write them, with the whole fixed digits test split (450 images), as an image folder.
3. Train the same model on those 100 images with the same recipe twice: from random weights, and from the
   pretrained checkpoint (`--weights`, optionally `--freeze-epochs`). Report test top-1 on the full test split.
   There is no validation split (100 images are too few to spare any): the final epoch is the result.

    python benchmarks/transfer.py                          # pretrain 5 epochs (into runs/transfer), 5 seeds
    python benchmarks/transfer.py --pretrained runs/transfer/pigeon-s-fashion-mnist/weights/best.safetensors
    python benchmarks/transfer.py --quick                  # tiny smoke run (used by the tests): pretrains on
                                                           # the digits built-in, not Fashion-MNIST, to be quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import save, spread

import pigeon


def write_digits(root: Path, per_class: int, seed: int) -> None:
    from PIL import Image

    from pigeon.data.builtins import digits

    splits, classes, _ = digits(None, False)
    rng = np.random.default_rng(seed)
    for split_name, split in splits.items():
        labels = np.asarray(split.labels)
        for c, name in enumerate(classes):
            idx = np.flatnonzero(labels == c)
            if split_name == "train":
                idx = rng.choice(idx, size=per_class, replace=False)
            folder = root / split_name / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                Image.fromarray(np.asarray(split.images[i][0])).save(folder / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", help="reuse this pigeon-s Fashion-MNIST checkpoint instead of training one")
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="tiny pretraining and fine-tuning, results not saved")
    args = parser.parse_args()
    model, imgsz, source = "pigeon-s", 28, "fashion-mnist"
    if args.quick:  # the plumbing only: a whole Fashion-MNIST epoch alone would take minutes in fp32 on AVX2
        args.pretrain_epochs, args.seeds, args.epochs, model, source = 1, [0], 3, "pigeon-n", "digits"
    common = {"model": model, "imgsz": imgsz, "epochs": args.epochs, "batch": 32, "val_fraction": 0.0,
              "plots": False, "verbose": False}
    variants: dict[str, dict[str, Any]] = {
        "scratch": {},
        "fine-tuned (defaults)": {"weights": "PRETRAINED"},
        "fine-tuned, --backbone-lr-mult 0.1": {"weights": "PRETRAINED", "backbone_lr_mult": 0.1},
        "fine-tuned, --freeze-epochs 5": {"weights": "PRETRAINED", "freeze_epochs": min(5, args.epochs - 1)},
    }
    with tempfile.TemporaryDirectory() as work:
        pretrained = args.pretrained
        if pretrained is None:
            project = f"{work}/pretrain" if args.quick else "runs/transfer"
            run = pigeon.train(source, model=model, epochs=args.pretrain_epochs, batch=256, imgsz=imgsz,
                               val_fraction=0.0, project=project, plots=False, verbose=False)
            pretrained = str(run.best)
            print(f"pretrained {model} on {source} in {run.seconds:.0f}s: {pretrained}", flush=True)
        meta = json.loads(Path(pretrained).with_suffix(".meta.json").read_text())
        if meta["model"] != model:
            raise SystemExit(f"{pretrained} is a {meta['model']} checkpoint; this benchmark fine-tunes {model}")
        pretrain = {"checkpoint": pretrained, "epochs": meta["config"]["epochs"],
                    "fashion_mnist_test_top1": meta["metrics"]["test"]["top1"]}
        print(f"pretrained: {pretrain}", flush=True)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for seed in args.seeds:
            data = Path(work) / f"digits-{args.per_class}-seed{seed}"
            write_digits(data, args.per_class, seed)
            for name, extra in variants.items():
                opts = {**common, **{k: pretrained if v == "PRETRAINED" else v for k, v in extra.items()}}
                run = pigeon.train(str(data), **opts, seed=seed, project=f"{work}/runs")
                top1 = run.test["top1"] if run.test else float("nan")
                results[name].append({"seed": seed, "test_top1": top1, "seconds": round(run.seconds, 1)})
                print(f"seed {seed} {name}: test top-1 {top1:.2%}", flush=True)
    summary = {name: spread([r["test_top1"] for r in runs]) for name, runs in results.items()}
    for name, s in summary.items():
        print(f"{name}: mean {s['mean']:.2%} over {s['n']} seeds (min {s['min']:.2%}, max {s['max']:.2%})")
    if args.quick:
        return
    rows = [f"| start | {args.per_class} digits per class, test top-1 (mean of {len(args.seeds)} seeds) | "
            "min-max | sd |", "|---|---|---|---|"]
    for name, s in summary.items():
        sd = statistics.stdev([r["test_top1"] for r in results[name]]) if len(results[name]) > 1 else 0.0
        rows.append(f"| {name} | {s['mean']:.2%} | {s['min']:.2%}-{s['max']:.2%} | {sd:.2%} |")
    note = (f"\n\n{model} at {imgsz}px, `--epochs {args.epochs} --batch 32 --val-fraction 0`, the same for every "
            f"row; the pretrained checkpoint is {model} trained on Fashion-MNIST for {pretrain['epochs']} epochs "
            f"({pretrain['fashion_mnist_test_top1']:.2%} on its test split). Each seed draws its own 10 images per "
            "class and seeds the training; the test split is the fixed 450-image digits test split.")
    save("transfer", {"model": model, "imgsz": imgsz, "per_class": args.per_class, "recipe": common,
                      "pretrain": pretrain, "runs": results, "summary": summary}, "\n".join(rows) + note)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
