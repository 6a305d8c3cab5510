"""Knowing when not to answer: a Fashion-MNIST model fed scikit-learn's digits, and a digits model fed
Fashion-MNIST. The images of the other dataset should score low on the confidence pigeon abstains with.

Each model is trained by the real command line with the default recipe (calibration on, so the temperature is
fitted on its own validation split); Fashion-MNIST gets `--epochs 3` by default to keep the run short on a
CPU. The score is the top-1 probability after the temperature, exactly what `--min-conf` compares with; the
other dataset's images are resized to the model's input by pigeon's own preprocessing, as `predict` would.

Reported per direction:
- AUROC of the score, in-distribution test images against the other dataset's (1.0: every foreign image scores
  below every own one; 0.5: the score cannot tell them apart), with and without the temperature;
- the fraction of foreign images still answered at the --min-conf that answers 95% of the own test images
  (FPR at 95% TPR: lower is better), and that threshold;
- ECE on the own test split, before and after the temperature.

    python benchmarks/ood.py                 # both directions (about 5 minutes on a 2-core AVX2 CPU)
    python benchmarks/ood.py --epochs 10     # the Fashion-MNIST recipe's own length
    python benchmarks/ood.py --quick         # digits model only, 1 epoch, 500 foreign images; nothing saved
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import cpu_flags, run_timed, save


def train(data: str, project: str, epochs: str | None) -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "pigeon", "train", "--data", data, "--project", project, "--name", data,
           "--no-verbose", "--no-plots", *(["--epochs", epochs] if epochs else [])]
    wall, out = run_timed(cmd)
    return Path(json.loads(out.strip().splitlines()[-1])["best"]), wall


def confidences(clf: object, images: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Top-1 probability of each image, at the model's temperature (or at `temperature`)."""
    import torch

    from pigeon.data.preprocess import array_to_uint8

    spec = clf.preprocess  # type: ignore[attr-defined]
    if images.shape[-2:] != (spec.imgsz, spec.imgsz) or images.shape[1] != spec.channels:
        images = np.stack([array_to_uint8(img, spec) for img in images])  # what predict does to a foreign array
    logits = torch.cat([clf.logits(images[i:i + 1024]) for i in range(0, len(images), 1024)])  # type: ignore
    t = clf.temperature if temperature is None else temperature  # type: ignore[attr-defined]
    return (logits / t).softmax(1).max(1).values.numpy()


def direction(own: str, foreign: str, best: Path, foreign_limit: int | None) -> dict:
    import pigeon
    from pigeon.calibration import auroc
    from pigeon.data import load_dataset

    clf = pigeon.load(best, device="cpu")
    spec = clf.preprocess
    own_test = np.asarray(load_dataset(own, verbose=False).splits["test"].images)
    other = load_dataset(foreign, verbose=False)
    foreign_images = np.concatenate([np.asarray(s.images) for s in other.splits.values()])[:foreign_limit]
    scores = {"calibrated": (confidences(clf, own_test), confidences(clf, foreign_images)),
              "plain softmax": (confidences(clf, own_test, 1.0), confidences(clf, foreign_images, 1.0))}
    own_conf, foreign_conf = scores["calibrated"]
    threshold = float(np.quantile(own_conf, 0.05, method="lower"))  # answers at least 95% of own test images
    report = pigeon.val(clf, own, split="test", project=None, verbose=False)["calibration"]
    return {"model": own, "foreign": foreign, "own_images": len(own_conf), "foreign_images": len(foreign_conf),
            "imgsz": spec.imgsz, "temperature": clf.temperature,
            "auroc": {k: auroc(a, b) for k, (a, b) in scores.items()},
            "min_conf_at_95": threshold, "own_answered": float((own_conf >= threshold).mean()),
            "foreign_answered": float((foreign_conf >= threshold).mean()),
            "foreign_mean_conf": float(foreign_conf.mean()), "own_mean_conf": float(own_conf.mean()),
            "test_ece": report["ece"], "test_ece_uncalibrated": report["ece_uncalibrated"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default="3", help="Fashion-MNIST training epochs (digits: the recipe's)")
    parser.add_argument("--quick", action="store_true", help="digits model only, 1 epoch, 500 foreign images")
    args = parser.parse_args()
    pairs = [("digits", "fashion-mnist")] + ([] if args.quick else [("fashion-mnist", "digits")])
    results = []
    with tempfile.TemporaryDirectory() as work:
        for own, foreign in pairs:
            epochs = "1" if args.quick else (args.epochs if own == "fashion-mnist" else None)
            best, wall = train(own, str(Path(work) / "runs"), epochs)
            r = direction(own, foreign, best, 500 if args.quick else None)
            r.update(train_seconds=round(wall, 1), epochs=epochs or "recipe")
            results.append(r)
            print(f"{own} model, {foreign} images: AUROC {r['auroc']['calibrated']:.4f} (plain softmax "
                  f"{r['auroc']['plain softmax']:.4f}); at --min-conf {r['min_conf_at_95']:.3f} "
                  f"{r['own_answered']:.1%} of own test answered, {r['foreign_answered']:.1%} of foreign; "
                  f"temperature {r['temperature']:.3f}, test ECE {r['test_ece_uncalibrated']:.2%} -> "
                  f"{r['test_ece']:.2%} ({r['train_seconds']}s to train)", flush=True)
    if args.quick:
        return
    rows = ["| model (epochs) | fed | AUROC, calibrated | AUROC, plain softmax | foreign answered at 95% own "
            "(--min-conf) | temperature | test ECE before → after |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['model']} ({r['epochs']}) | {r['foreign']} ({r['foreign_images']:,} images) | "
                    f"{r['auroc']['calibrated']:.4f} | {r['auroc']['plain softmax']:.4f} | "
                    f"{r['foreign_answered']:.1%} ({r['min_conf_at_95']:.3f}) | {r['temperature']:.3f} | "
                    f"{r['test_ece_uncalibrated']:.2%} → {r['test_ece']:.2%} |")
    rows.append("\nScore: the top-1 probability after the temperature fitted on each model's validation split, "
                "the one `--min-conf` uses. Own images: the model's test split; foreign images: every split of the "
                "other dataset, resized by pigeon's preprocessing (digits are 8x8, so at 28 px they are blurry "
                "upscales; Fashion-MNIST at 8 px is a coarse downscale). \"Foreign answered\": the fraction of "
                "foreign images at or above the threshold that answers 95% of own test images (lower is better). "
                f"Default recipe otherwise. CPU flags: {cpu_flags()}.")
    save("ood", {"results": results}, "\n".join(rows))


if __name__ == "__main__":
    main()
