"""Deployment formats on this CPU: `pigeon bench` across formats and sizes, and pigeon vs YOLO11n-cls as ONNX.

Part 1 runs `pigeon.bench` on a Fashion-MNIST checkpoint (speed.py's, trained with the default recipe):
accuracy on the 10,000 test images, single-image latency (PNG file in, probabilities out: decode and
preprocessing included; median and p90 over warm runs), throughput at batch 64, and file size, for PyTorch,
ONNX, INT8 ONNX, TorchScript and OpenVINO.

Part 2 (when the peer's environment from speed.py exists) exports the peer's trained YOLO11n-cls to ONNX with
its own exporter and runs both ONNX files through the same onnxruntime session options in this process:
model-only latency at batch 1, throughput at batch 64, and test top-1 with each model's own preprocessing.

    python benchmarks/deploy.py --model runs/bench/seed0/weights/best.safetensors   # left by speed.py
    python benchmarks/deploy.py --model ... --no-peer --imgsz 28
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, save

import pigeon

PEER_VENV = ROOT / "benchmarks" / ".venv-peer"
PEER_WEIGHTS = ROOT / "benchmarks" / ".peer-work" / "runs" / "fmnist" / "weights" / "best.pt"


def ort_session(path: Path) -> Any:
    from pigeon.deploy.runtimes import need

    ort = need("onnxruntime")  # with its telemetry off, as pigeon itself loads it

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def latency(session: Any, x1: np.ndarray, runs: int) -> dict[str, float]:
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: x1})
    lat = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x1})
        lat.append((time.perf_counter() - t0) * 1000)
    return {"b1_ms_median": statistics.median(lat), "b1_ms_p90": float(np.percentile(lat, 90))}


def throughput(session: Any, x64: np.ndarray, seconds: float = 3.0) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: x64})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, {name: x64})
        n += len(x64)
    return n / (time.perf_counter() - t0)


def accuracy(session: Any, x: np.ndarray, labels: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else 500
    out = np.concatenate([session.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])
    return float((out.argmax(1) == labels).mean())


def peer_inputs(images: np.ndarray) -> np.ndarray:
    """The peer's classification preprocessing at imgsz 32: grey -> RGB, resize to 32, centre crop, /255."""
    from PIL import Image

    out = np.empty((len(images), 3, 32, 32), np.float32)
    for i, img in enumerate(images):
        rgb = Image.fromarray(img[0]).convert("RGB").resize((32, 32), Image.BILINEAR)
        out[i] = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255
    return out


def peer_part(model: str, runs: int, work: Path) -> dict[str, Any]:
    from peer_ultralytics import ensure_onnx_export

    from pigeon.data import load_dataset

    ensure_onnx_export()
    env = {"YOLO_CONFIG_DIR": str(ROOT / "benchmarks" / ".peer-work" / "config"), "YOLO_OFFLINE": "1"}
    files = {}
    for dynamic in (False, True):
        folder = work / f"peer-{'dynamic' if dynamic else 'fixed'}"
        folder.mkdir()
        weights = folder / "best.pt"
        weights.write_bytes(PEER_WEIGHTS.read_bytes())
        subprocess.run([str(PEER_VENV / "bin" / "yolo"), "export", f"model={weights}", "format=onnx", "imgsz=32",
                        f"dynamic={dynamic}"], check=True, capture_output=True, env={**os.environ, **env})
        files[dynamic] = folder / "best.onnx"
    ours = {dyn: pigeon.export(model, "onnx", dynamic_batch=dyn, out=str(work / f"pigeon-{dyn}.onnx"),
                               data="fashion-mnist", verbose=False).path for dyn in (False, True)}
    ds = load_dataset("fashion-mnist", imgsz=28, channels=1, verbose=False)
    test = ds.splits["test"]
    images, labels = np.asarray(test.images), np.asarray(test.labels)
    spec = ds.preprocess
    ours_x = ((images.astype(np.float32) / 255 - np.array(spec.mean, np.float32).reshape(1, -1, 1, 1))
              / np.array(spec.std, np.float32).reshape(1, -1, 1, 1)).astype(np.float32)
    peer_x = peer_inputs(images)
    # The peer trained on class folders (peer_ultralytics.py names them) and numbers classes in sorted order.
    folders = [c.replace("/", "-").replace(" ", "_") for c in ds.classes]
    peer_labels = np.array([sorted(folders).index(f) for f in folders])[labels]
    rows = {}
    ours_name = f"{pigeon.load(model, device='cpu').meta['model']} (pigeon export)"
    for name, fixed, dynamic, x, y in ((ours_name, ours[False], ours[True], ours_x, labels),
                                       ("YOLO11n-cls (its own export)", files[False], files[True], peer_x,
                                        peer_labels)):
        fixed_s, dynamic_s = ort_session(fixed), ort_session(dynamic)
        timing = {**latency(fixed_s, x[:1], runs), "b64_img_s": throughput(dynamic_s, x[:64])}
        rows[name] = {**timing, "test_top1": accuracy(dynamic_s, x, y),
                      "size_mb": Path(dynamic).stat().st_size / 1e6, "input": list(x.shape[1:])}
        print(f"{name}: {rows[name]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a pigeon checkpoint trained on fashion-mnist")
    parser.add_argument("--formats", default="torch,onnx,onnx-int8,torchscript,openvino")
    parser.add_argument("--imgsz", default="28,64")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    rows = pigeon.bench(args.model, formats=args.formats, imgsz=args.imgsz, data="fashion-mnist", runs=args.runs,
                        project=None)
    from pigeon.deploy.bench import table

    text = table(rows)
    payload: dict[str, Any] = {"model": args.model, "rows": rows}
    if not args.no_peer and PEER_WEIGHTS.exists() and (PEER_VENV / "bin" / "yolo").exists():
        with tempfile.TemporaryDirectory() as work:
            peer = peer_part(args.model, args.runs, Path(work))
        payload["onnx_vs_peer"] = peer
        text += ("\n\nSame onnxruntime (CPU provider, default threads) for both models, in one process; latency is "
                 "the model alone at batch 1 (fixed-batch export), throughput at batch 64 (dynamic-batch export), "
                 "accuracy on the 10,000 test images with each model's own preprocessing.\n\n"
                 "| ONNX model | input | test top-1 | batch 1 median (p90) | batch 64 | file |\n"
                 "|---|---|---|---|---|---|\n")
        for name, r in peer.items():
            text += (f"| {name} | {'x'.join(map(str, r['input']))} | {r['test_top1']:.2%} | {r['b1_ms_median']:.3f} ms "
                     f"({r['b1_ms_p90']:.3f}) | {r['b64_img_s']:.0f} img/s | {r['size_mb']:.2f} MB |\n")
    print(text)
    save("deploy", payload, text)


if __name__ == "__main__":
    main()
