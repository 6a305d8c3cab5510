"""`pigeon bench`: one checkpoint across formats and input sizes: accuracy, latency, throughput, file size.

Latency is one image file in, probabilities out (decode, resize and normalize included), measured after warm-up
runs; throughput is already-decoded batches through the model alone. Each export is made fresh (with its
parity check) in a temporary folder, so the numbers describe exactly what `pigeon export` writes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.config import BenchConfig, ExportConfig, Size, as_size, size_text
from pigeon.progress import progress

EXPORTS = {"onnx": ("onnx", False), "onnx-int8": ("onnx", True), "torchscript": ("torchscript", False),
           "openvino": ("openvino", False)}
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript", "openvino": ""}


def bench(cfg: BenchConfig) -> list[dict[str, Any]]:
    from pigeon.data import load_dataset
    from pigeon.deploy.exporter import at_size, export
    from pigeon.deploy.runtimes import load_runtime
    from pigeon.engine import checkpoint
    from pigeon.engine.predict import Classifier

    model, meta = checkpoint.load_model(cfg.model)
    data = cfg.data or meta.get("config", {}).get("data")
    sizes = cfg.sizes or [as_size(meta["preprocess"]["imgsz"])]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        for imgsz in sizes:
            ds = load_dataset(str(data), imgsz=imgsz, channels=int(meta["preprocess"]["channels"]),
                              resize=meta["preprocess"]["resize"], cache_dir=cfg.cache_dir, verbose=False)
            split_name = next(s for s in ("val", "test", "train") if s in ds.splits)
            split = ds.splits[split_name]
            to_model = np.array([list(meta["classes"]).index(c) for c in ds.classes], dtype=np.int64)
            labels = to_model[np.asarray(split.labels)]
            sample = Path(work) / f"sample-{size_text(imgsz)}.png"
            _write_png(np.asarray(split.images[0]), sample)
            for fmt in cfg.format_list:
                if fmt == "torch":  # what `pigeon predict` runs on a checkpoint, at this input size
                    path, parity = Path(cfg.model), None
                    stored = list(imgsz) if isinstance(imgsz, tuple) else imgsz  # as a checkpoint holds it
                    sized_meta = {**meta, "preprocess": {**meta["preprocess"], "imgsz": stored}}
                    clf = Classifier(at_size(model, meta, imgsz), sized_meta, device="cpu")
                else:
                    kind, int8 = EXPORTS[fmt]
                    out = Path(work) / f"{size_text(imgsz)}-{fmt}" / f"model{SUFFIX[kind]}"
                    result = export(ExportConfig(model=str(cfg.model), format=kind, int8=int8, imgsz=imgsz,
                                                 dynamic_batch=True, data=str(data), cache_dir=cfg.cache_dir,
                                                 out=str(out), verbose=False))
                    path, parity = result.path, result.parity
                    clf = Classifier(*load_runtime(path), device="cpu")  # what pigeon.load does for an export
                rows.append(_measure(clf, fmt, imgsz, path, sample, np.asarray(split.images), labels, split_name,
                                     parity, cfg))
                if cfg.verbose:
                    r = rows[-1]
                    print(f"{fmt:<12} {size_text(imgsz):>4}px  top-1 {r['top1']:.2%}  "
                          f"latency {r['latency_ms_median']:.2f} ms "
                          f"(p90 {r['latency_ms_p90']:.2f})  {r['throughput_img_s']:.0f} img/s  "
                          f"{r['size_mb']:.2f} MB", flush=True)
    return rows


def _write_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(path)


def _measure(clf: Any, fmt: str, imgsz: Size, path: Path, sample: Path, images: np.ndarray, labels: np.ndarray,
             split_name: str, parity: dict[str, Any] | None, cfg: BenchConfig) -> dict[str, Any]:
    probs = np.concatenate([clf.probabilities(images[i:i + 256]) for i in range(0, len(images), 256)])
    top1 = float((probs.argmax(1) == labels).mean())
    for _ in range(cfg.warmup):
        clf.predict(str(sample))
    times = []
    bar = progress(cfg.runs, f"{fmt} {size_text(imgsz)}px latency", enabled=cfg.verbose, leave=False)
    for _ in range(cfg.runs):
        t0 = time.perf_counter()
        clf.predict(str(sample))
        times.append((time.perf_counter() - t0) * 1000)
        bar.update(1)
    bar.close()
    batch = images[:cfg.batch]
    clf.probabilities(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < cfg.throughput_seconds:
        clf.probabilities(batch)
        n += len(batch)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return {"format": fmt, "imgsz": list(imgsz) if isinstance(imgsz, tuple) else imgsz, "split": split_name,
            "images": len(labels), "top1": top1,
            "latency_ms_median": statistics.median(times), "latency_ms_p90": float(np.percentile(times, 90)),
            "latency_runs": len(times), "throughput_img_s": n / (time.perf_counter() - t0), "batch": len(batch),
            "size_mb": size / 1e6, "parity": parity}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| format | input | top-1 | latency median (p90), 1 image file | throughput, batch | size | "
             "agreement with PyTorch |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = f"{r['parity']['top1_agreement']:.2%}" if r["parity"] else "(reference)"
        lines.append(f"| {r['format']} | {size_text(r['imgsz'])}px | {r['top1']:.2%} ({r['split']}, {r['images']}) | "
                     f"{r['latency_ms_median']:.2f} ms ({r['latency_ms_p90']:.2f}) | "
                     f"{r['throughput_img_s']:.0f} img/s (b{r['batch']}) | {r['size_mb']:.2f} MB | {agree} |")
    return "\n".join(lines)
