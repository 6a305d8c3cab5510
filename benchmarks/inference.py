"""CPU inference, file in -> label out, pigeon vs Ultralytics YOLO11n-cls, measured side by side.

Both predict on the same 10,000 Fashion-MNIST test PNGs (written by peer_ultralytics.py). Single-image latency
is one `predict(path)` call per file, decode and preprocessing included (median and p90 over 200 files after
10 warm-up calls); throughput streams all files at batch 1 and batch 64. Accuracy is each model's own test
top-1 from its training run.

    python benchmarks/inference.py --model runs/bench/seed0/weights/best.safetensors   # left by speed.py
    python benchmarks/inference.py --no-peer
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/inference.py --model runs/bench-avx2/seed0/weights/best.safetensors

Under an ISA limit (both tools inherit it) the results go to their own table, inference-avx2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

from common import RESULTS, ROOT, cpu_flags, cpu_table_suffix, save

import pigeon

PEER = ROOT / "benchmarks" / "peer_ultralytics.py"
IMAGES = ROOT / "benchmarks" / ".peer-work" / "fashion-mnist" / "test"


def measure_pigeon(model_path: str, files: list[str], n_single: int) -> dict:
    clf = pigeon.load(model_path, device="cpu")
    for f in files[:10]:
        clf.predict(f)
    lat = []
    for f in files[:n_single]:
        start = time.perf_counter()
        clf.predict(f)
        lat.append(time.perf_counter() - start)
    out = {"single_ms_median": 1000 * statistics.median(lat), "single_ms_p90": 1000 * sorted(lat)[int(0.9 * len(lat))]}
    for batch in (1, 64):
        start = time.perf_counter()
        preds = clf.predict(files, batch=batch)
        out[f"stream_batch{batch}_img_s"] = len(preds) / (time.perf_counter() - start)
    out["test_top1"] = clf.meta.get("metrics", {}).get("test", {}).get("top1")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pigeon checkpoint trained on fashion-mnist")
    parser.add_argument("--n-single", type=int, default=200)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    files = sorted(glob.glob(str(IMAGES / "**" / "*.png"), recursive=True))
    if not files:
        sys.exit(f"no PNGs under {IMAGES}: run `python benchmarks/peer_ultralytics.py train` first")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    suffix = cpu_table_suffix()
    results = {"images": len(files), "pigeon": measure_pigeon(args.model, files, args.n_single), "isa": isa}
    print("pigeon", json.dumps(results["pigeon"]), flush=True)
    if not args.no_peer:
        out = subprocess.run([sys.executable, str(PEER), "infer", "--images", str(IMAGES), "--n-single",
                              str(args.n_single)], capture_output=True, text=True, check=True).stdout
        results["peer"] = json.loads(out.strip().splitlines()[-1])
        speed = RESULTS / f"speed{suffix}.json"
        if speed.exists() and json.loads(speed.read_text()).get("peer"):
            results["peer"]["test_top1"] = json.loads(speed.read_text())["peer"]["final_top1"]
        print("peer", json.dumps(results["peer"]), flush=True)
    rows = ["| tool | test top-1 | single image, ms (median / p90) | stream batch 1, img/s | stream batch 64, img/s |",
            "|---|---|---|---|---|"]
    ours = pigeon.load(args.model, device="cpu").meta["model"]
    for name, r in ((f"{ours} (pigeon, PyTorch eager)", results["pigeon"]),
                    ("YOLO11n-cls (Ultralytics, PyTorch eager)", results.get("peer"))):
        if r:
            acc = f"{r['test_top1']:.2%}" if r.get("test_top1") else "n/a"
            rows.append(f"| {name} | {acc} | {r['single_ms_median']:.2f} / {r['single_ms_p90']:.2f} | "
                        f"{r['stream_batch1_img_s']:.0f} | {r['stream_batch64_img_s']:.0f} |")
    if results.get("peer"):
        p, q = results["pigeon"], results["peer"]
        ratios = {"single": q["single_ms_median"] / p["single_ms_median"],
                  "batch1": p["stream_batch1_img_s"] / q["stream_batch1_img_s"],
                  "batch64": p["stream_batch64_img_s"] / q["stream_batch64_img_s"]}
        results["ratios"] = ratios
        rows.append(f"\npigeon vs peer: single image {ratios['single']:.1f}x faster, stream batch 1 "
                    f"{ratios['batch1']:.1f}x, batch 64 {ratios['batch64']:.1f}x (same machine, same run; "
                    f"{ours} takes the native 28 px, the peer its 32 px).")
    rows.append(f"\nCPU flags: {cpu_flags()}" + (f" (ONEDNN_MAX_CPU_ISA={isa}, both tools)." if isa else "."))
    save(f"inference{suffix}", results, "\n".join(rows))


if __name__ == "__main__":
    main()
