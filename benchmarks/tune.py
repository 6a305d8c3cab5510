"""Does `pigeon tune` beat the defaults? Digits, a fixed search budget, test top-1 over seeds.

1. The default `pigeon train --data digits` with seeds 0, 1, 2.
2. `pigeon tune --data digits --time <budget>` with the default space (lr, weight_decay, label_smoothing) and
   median pruner, selected on the validation split; then its best options trained with seeds 0, 1, 2.
Both are scored on the test split, which the study never sees. The table says honestly whether it helped.

    python benchmarks/tune.py                 # a 4-minute search budget
    python benchmarks/tune.py --budget 10m
    python benchmarks/tune.py --quick         # a smoke run (2 trials of 1 epoch); nothing is saved
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import save

import pigeon

SEEDS = (0, 1, 2)


def test_top1(options: dict[str, Any], seed: int, work: Path) -> float:
    run = pigeon.train(**{**options, "seed": seed, "verbose": False, "plots": False,
                          "project": str(work / "runs"), "cache_dir": str(work / "cache")})
    return float(run.test["top1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="4m", help="search time budget (default 4m)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; nothing is saved")
    args = parser.parse_args()
    base: dict[str, Any] = {"data": "digits"} | ({"epochs": 1} if args.quick else {})
    seeds = SEEDS[:1] if args.quick else SEEDS
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        default = [test_top1(base, s, work) for s in seeds]
        default_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        budget = {"trials": 2} if args.quick else {"time": args.budget}
        study = pigeon.tune(**base, **budget, project=str(work / "tune"), final=False, verbose=False,
                            cache_dir=str(work / "cache"))
        search_s = time.perf_counter() - t0
        tuned = [test_top1({**base, **study.best_params}, s, work) for s in seeds]
        trials = study.trials
    mean_d, mean_t = statistics.fmean(default), statistics.fmean(tuned)
    verdict = ("improves on" if mean_t > max(default) else "does not beat" if mean_t <= mean_d
               else "is within the seed spread of")
    print(f"default test top-1 {mean_d:.2%} ({', '.join(f'{v:.2%}' for v in default)})")
    print(f"tuned   test top-1 {mean_t:.2%} ({', '.join(f'{v:.2%}' for v in tuned)}) after "
          f"{len(trials)} trials in {search_s:.0f}s; best {study.best_params}")
    print(f"tuning {verdict} the defaults")
    if args.quick:
        return
    states = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in study.best_params.items())
    table = "\n".join([
        "| options | test top-1, seeds 0-2 (mean, min-max) | search |",
        "|---|---|---|",
        f"| defaults (`pigeon train --data digits`) | {mean_d:.2%} ({min(default):.2%}-{max(default):.2%}) | - |",
        f"| tuned: {params} | {mean_t:.2%} ({min(tuned):.2%}-{max(tuned):.2%}) | {len(trials)} trials "
        f"({states['COMPLETE']} complete, {states['PRUNED']} pruned) in {search_s:.0f} s |",
        "",
        f"`pigeon tune --data digits --time {args.budget}` (space lr, weight_decay, label_smoothing; median "
        f"pruner; selected on the validation split) **{verdict} the defaults** on the test split.",
    ])
    save("tune", {"budget": args.budget, "default_test_top1": default, "tuned_test_top1": tuned,
                  "best_params": study.best_params, "best_val": study.best_value, "trials": trials,
                  "search_seconds": search_s, "default_seconds": default_s, "verdict": verdict}, table)


if __name__ == "__main__":
    main()
