"""The peer, measured: Ultralytics YOLO11n-cls in its own virtual environment, fully offline.

Ultralytics is never a dependency of pigeon: this script creates benchmarks/.venv-peer (torch from the same
wheels, ultralytics from PyPI), writes Fashion-MNIST as PNG folders into benchmarks/.peer-work/ (the peer's
dataset, so whatever it writes there stays out of pigeon's way), and drives the peer through its own CLI and
Python API in that environment. No Ultralytics code is copied here.

    python benchmarks/peer_ultralytics.py train    # 10 epochs, imgsz 32, batch 64, CPU; prints one JSON line
    python benchmarks/peer_ultralytics.py infer --images DIR   # latency / throughput of its predict path
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-peer"
WORK = HERE / ".peer-work"
VERSION = "8.4.190"
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
ONNX_EXPORT = ["onnx>=1.12,<2", "onnxslim>=0.1.71"]


def peer_env() -> dict[str, str]:
    config = WORK / "config"
    config.mkdir(parents=True, exist_ok=True)
    # Keep its settings out of the user's home, and tell it there is no network to try.
    return {**os.environ, "YOLO_CONFIG_DIR": str(config), "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "True"}


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TORCH], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"ultralytics=={VERSION}"], check=True)
        (VENV / ".installed").touch()
    return python


def ensure_onnx_export() -> None:
    """The packages the peer's ONNX exporter imports (it would otherwise try to install them itself)."""
    python = ensure_venv()
    if subprocess.run([str(python), "-c", "import onnx, onnxslim"], capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ONNX_EXPORT], check=True)


def write_fashion_folders(root: Path) -> Path:
    """Fashion-MNIST as train/<class>/*.png and test/<class>/*.png (the peer reads image folders)."""
    if (root / ".complete").exists():
        return root
    from PIL import Image

    from pigeon.data import load_dataset

    ds = load_dataset("fashion-mnist", verbose=False)
    for split in ("train", "test"):
        part = ds.splits[split]
        for i, (img, label) in enumerate(zip(part.images, part.labels)):
            folder = root / split / ds.classes[int(label)].replace("/", "-").replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(folder / f"{i:05d}.png")
    (root / ".complete").touch()
    return root


def train() -> dict:
    python = ensure_venv()
    data = write_fashion_folders(WORK / "fashion-mnist")
    project = WORK / "runs"
    yolo = VENV / "bin" / "yolo"
    cmd = [str(yolo), "classify", "train", f"data={data}", "model=yolo11n-cls.yaml", "pretrained=False",
           "imgsz=32", "batch=64", "epochs=10", "device=cpu", "plots=False", f"project={project}", "name=fmnist",
           "exist_ok=True"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=peer_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the peer failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    run = project / "fmnist"
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(open(run / "results.csv"))]
    elapsed = [float(r["time"]) for r in rows]
    accs = [float(r["metrics/accuracy_top1"]) for r in rows]
    startup = wall - elapsed[-1]
    del python
    return {"tool": "ultralytics", "version": VERSION, "model": "yolo11n-cls.yaml", "wall_seconds": round(wall, 1),
            "final_top1": accs[-1], "best_top1": max(accs),
            "curve": [(round(startup + t, 1), a) for t, a in zip(elapsed, accs)],
            "weights": str(run / "weights" / "last.pt")}


INFER = r"""
import json, sys, time, glob, statistics
from ultralytics import YOLO
weights, folder, n_single = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(glob.glob(folder + "/**/*.png", recursive=True))
model = YOLO(weights, task="classify")
for f in files[:10]:
    model.predict(f, imgsz=32, device="cpu", verbose=False)
lat = []
for f in files[:n_single]:
    t = time.perf_counter()
    model.predict(f, imgsz=32, device="cpu", verbose=False)
    lat.append(time.perf_counter() - t)
p90 = sorted(lat)[int(0.9 * len(lat))]
out = {"single_ms_median": 1000 * statistics.median(lat), "single_ms_p90": 1000 * p90}
for batch in (1, 64):
    t = time.perf_counter(); n = 0
    # The peer does not look into subfolders: hand it a glob over the class folders.
    for r in model.predict(folder + "/*/*.png", imgsz=32, device="cpu", batch=batch, stream=True, verbose=False):
        n += 1
    out[f"stream_batch{batch}_img_s"] = n / (time.perf_counter() - t)
print(json.dumps(out))
"""


def infer(images: str, n_single: int, weights: str) -> dict:
    python = ensure_venv()
    proc = subprocess.run([str(python), "-c", INFER, weights, images, str(n_single)], env=peer_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the peer failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train")
    p = sub.add_parser("infer")
    p.add_argument("--images", required=True)
    p.add_argument("--n-single", type=int, default=200)
    p.add_argument("--weights", default=str(WORK / "runs" / "fmnist" / "weights" / "last.pt"))
    args = parser.parse_args()
    result = train() if args.cmd == "train" else infer(args.images, args.n_single, args.weights)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
