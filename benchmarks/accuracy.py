"""Accuracy and wall time of the default `pigeon train` on the built-in datasets, end to end.

Each run is the real command line (`python -m pigeon train ...`) timed from process start to the printed
final test accuracy, dataset loading included. The headline accuracy is the test top-1 of the model selected
on a validation split carved from train (never selected on test).

    python benchmarks/accuracy.py                      # digits + fashion-mnist, 1 seed each
    python benchmarks/accuracy.py --seeds 0 1 2        # mean over seeds
    python benchmarks/accuracy.py --cases digits       # re-run one case; the others' results are kept
    python benchmarks/accuracy.py --quick              # tiny smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import RESULTS, cpu_flags, run_timed, save, spread

# The defaults as a user runs them: the recipe for the machine picks model, epochs and batch.
CASES = {
    "digits": ["--data", "digits"],
    "fashion-mnist": ["--data", "fashion-mnist"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on digits only, results not saved")
    args = parser.parse_args()
    cases = {"digits": CASES["digits"] + ["--epochs", "1"]} if args.quick else {c: CASES[c] for c in args.cases}
    results = {}
    with tempfile.TemporaryDirectory() as project:
        for case, argv in cases.items():
            runs = []
            for seed in args.seeds:
                cmd = [sys.executable, "-m", "pigeon", "train", *argv, "--seed", str(seed), "--project", project,
                       "--no-verbose", "--no-plots"]
                seconds, out = run_timed(cmd)
                summary = json.loads(out.strip().splitlines()[-1])
                config = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
                recipe = f"{config['model']}, {config['epochs']} epochs, batch {config['batch']}, amp {config['amp']}"
                runs.append({"seed": seed, "seconds": round(seconds, 1), "test_top1": summary["test_top1"],
                             "recipe": recipe})
                print(f"{case} seed {seed}: test top-1 {summary['test_top1']:.2%} in {seconds:.1f}s", flush=True)
            results[case] = {"argv": argv, "runs": runs, "recipe": runs[0]["recipe"],
                             "test_top1": spread([r["test_top1"] for r in runs]),
                             "seconds": spread([r["seconds"] for r in runs])}
    if args.quick:
        return
    previous = RESULTS / "accuracy.json"
    if previous.exists():  # keep the cases not re-run this time
        results = {**json.loads(previous.read_text()).get("results", {}), **results}
    rows = ["| dataset | command | recipe | seeds | test top-1 (mean, min-max) | wall time (median, min-max) |",
            "|---|---|---|---|---|---|"]
    for case, r in results.items():
        acc, sec = r["test_top1"], r["seconds"]
        rows.append(f"| {case} | `pigeon train {' '.join(r['argv'])}` | {r.get('recipe', 'n/a')} | {acc['n']} | "
                    f"{acc['mean']:.2%} "
                    f"({acc['min']:.2%}-{acc['max']:.2%}) | "
                    f"{sec['median']:.0f} s ({sec['min']:.0f}-{sec['max']:.0f}) |")
    rows.append(f"\nCPU flags: {cpu_flags()}.")
    save("accuracy", {"results": results}, "\n".join(rows))


if __name__ == "__main__":
    main()
