"""Decoding a folder into the cache: one thread against a thread per core, by file size.

PIL frees the GIL while it decodes and resizes, so large files decode faster in threads; a tiny file is mostly
Python around the codec, which holds the GIL, so threads only contend for it. pigeon picks threads from the
median file size (`pigeon.data.folders.THREADED_DECODE_BYTES`); this table is where that size comes from.

    python benchmarks/decode.py            # 8x8 PNGs and 28-256 px JPEGs, 1,000 files each (about 1 min)
    python benchmarks/decode.py --quick    # 100 files each, nothing saved (tests)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import cpu_flags, save
from PIL import Image

from pigeon.data.folders import THREADED_DECODE_BYTES, _decode

KINDS = (("png", 8), ("jpg", 28), ("jpg", 64), ("jpg", 128), ("jpg", 256))


def write(root: Path, ext: str, side: int, n: int) -> list[Path]:
    rng = np.random.default_rng(side)
    base = (rng.random((side, side, 3)) * 60 + np.linspace(0, 180, side)[:, None, None]).astype(np.uint8)
    paths = [root / f"{i}.{ext}" for i in range(n)]
    for i, path in enumerate(paths):
        Image.fromarray(np.roll(base, i, axis=1)).save(path, **({"quality": 90} if ext == "jpg" else {}))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 files each, nothing saved")
    args = parser.parse_args()
    n, threads = (100 if args.quick else args.files), min(8, os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(threads) as pool:
        for ext, side in KINDS:
            root = Path(work) / f"{ext}{side}"
            root.mkdir()
            paths = write(root, ext, side, n)
            kib = float(np.median([p.stat().st_size for p in paths])) / 1024

            def decode(path: Path) -> object:
                return _decode(path, 64, 3, "crop")

            t = time.perf_counter()
            list(map(decode, paths))
            serial = time.perf_counter() - t
            t = time.perf_counter()
            list(pool.map(decode, paths))
            threaded = time.perf_counter() - t
            rows.append({"kind": f"{side} px {ext}", "median_kib": round(kib, 1), "files": n,
                         "one_thread_s": round(serial, 3), f"{threads}_threads_s": round(threaded, 3),
                         "speedup": round(serial / threaded, 2)})
            print(f"{side} px {ext} ({kib:.1f} KiB): one thread {serial:.2f}s, {threads} threads {threaded:.2f}s",
                  flush=True)
    if args.quick:
        return
    table = [f"| files | median size | one thread, s | {threads} threads, s | threads' speed-up |",
             "|---|---|---|---|---|"]
    table += [f"| {r['kind']} | {r['median_kib']} KiB | {r['one_thread_s']:.2f} | {r[f'{threads}_threads_s']:.2f} | "
              f"{r['speedup']:.2f}x |" for r in rows]
    table += ["", f"{n:,} files of each kind, decoded and resized to 64 px as a cache build does. pigeon decodes in "
              f"threads when the folder's median file is at least {THREADED_DECODE_BYTES // 1024} KiB. "
              f"CPU flags: {cpu_flags()}."]
    save("decode", {"rows": rows, "threads": threads}, "\n".join(table))


if __name__ == "__main__":
    main()
