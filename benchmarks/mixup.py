"""Mixup and CutMix against no mixing, at equal epochs (so about equal time: mixing a batch costs microseconds),
over seeds, on two kinds of data.

- digits: scikit-learn's 8x8 digits, the built-in, default recipe.
- fashion-10k: the first 1,000 training images of each Fashion-MNIST class (10,000 in all) written as a PNG
  folder, Fashion-MNIST's whole test split (10,000); default recipe otherwise. A subset, so that each run
  takes minutes on a 2-core CPU; mixing regularises, so a small training set is where it should help most.

Every run is the real command line; the model is chosen on the 10% of train held out for validation, never on
test. pigeon turns mixing on by default only where it wins: the table says whether any setting beats none by
more than the spread of the seeds.

    python benchmarks/mixup.py                          # both datasets, 3 settings, seeds 0 1 (about 20 min on AVX2)
    python benchmarks/mixup.py --cases digits --seeds 0 1 2 3 4
    python benchmarks/mixup.py --quick                  # digits, 1 epoch, one seed, nothing saved (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import cpu_flags, run_timed, save, spread, write_png_folder

SETTINGS = {"none": [], "mixup 0.2": ["--mixup", "0.2"], "cutmix 1.0": ["--cutmix", "1.0"]}
CASES = ("digits", "fashion-10k")


def fashion_subset(root: Path, per_class: int) -> Path:
    from pigeon.data import load_dataset

    ds = load_dataset("fashion-mnist", verbose=False)
    train, test = ds.splits["train"], ds.splits["test"]
    labels = np.asarray(train.labels)
    keep = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(len(ds.classes))])
    classes = [c.replace("/", "-") for c in ds.classes]
    return write_png_folder(root, classes, {"train": (np.asarray(train.images)[keep], labels[keep]),
                                            "test": (np.asarray(test.images), np.asarray(test.labels))})


def run(data: str, case: str, setting: str, seed: int, project: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pigeon", "train", "--data", data, *SETTINGS[setting], "--seed", str(seed),
           "--project", project, "--name", f"{case}-{setting.replace(' ', '')}-{seed}", "--no-verbose",
           "--no-plots", *extra]
    wall, out = run_timed(cmd)
    summary = json.loads(out.strip().splitlines()[-1])
    return {"case": case, "setting": setting, "seed": seed, "wall_seconds": round(wall, 1),
            "top1": summary["test_top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="digits, 1 epoch, one seed, nothing saved")
    args = parser.parse_args()
    cases, seeds = (["digits"], args.seeds[:1]) if args.quick else (args.cases, args.seeds)
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for case in cases:
            data = "digits" if case == "digits" else str(fashion_subset(Path(work) / case, 1000))
            for seed in seeds:
                for setting in SETTINGS:
                    runs.append(run(data, case, setting, seed, str(Path(work) / "runs"),
                                    ["--epochs", "1"] if args.quick else []))
                    r = runs[-1]
                    print(f"{case} {setting} seed {seed}: test top-1 {r['top1']:.2%} in {r['wall_seconds']}s",
                          flush=True)
    if args.quick:
        return
    rows = ["| data | setting | seeds | test top-1 (mean, min-max) | vs none (mean) | wall s (median) |",
            "|---|---|---|---|---|---|"]
    verdicts, summary = [], {}
    for case in cases:
        base = spread([r["top1"] for r in runs if r["case"] == case and r["setting"] == "none"])
        for setting in SETTINGS:
            mine = [r for r in runs if r["case"] == case and r["setting"] == setting]
            acc = spread([r["top1"] for r in mine])
            summary[f"{case}/{setting}"] = acc
            rows.append(f"| {case} | {setting} | {acc['n']} | {acc['mean']:.2%} ({acc['min']:.2%}-{acc['max']:.2%}) "
                        f"| {100 * (acc['mean'] - base['mean']):+.2f} pt | "
                        f"{spread([r['wall_seconds'] for r in mine])['median']:.0f} |")
            if setting != "none":
                # a win: every seed's run beats the best seed without mixing
                wins = acc["min"] > base["max"]
                verdicts.append(f"- {case}, {setting}: {'wins' if wins else 'does not win'} "
                                f"(its worst seed {acc['min']:.2%} against none's best {base['max']:.2%}).")
    rows += ["", *verdicts, "",
             "Default recipe otherwise (the epochs the recipe picks for this CPU), equal epochs per setting. "
             f"CPU flags: {cpu_flags()}."]
    save(f"mixup{'' if set(cases) == set(CASES) else '-' + '-'.join(cases)}", {"runs": runs, "summary": summary},
         "\n".join(rows))


if __name__ == "__main__":
    main()
