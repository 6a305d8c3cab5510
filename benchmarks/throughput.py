"""Training and inference images/s for pigeon-n/s/m at several input sizes, so users see how cost grows.

Uses the real training step (augment on uint8, normalize, forward/backward, optimizer, EMA) on random uint8
images of the given size; warm-up steps are excluded and the median of the timed steps is reported.

    python benchmarks/throughput.py                          # CPU: pigeon-n/s/m at 32, 64, 224 px
    python benchmarks/throughput.py --device cuda --batch 256
    python benchmarks/throughput.py --quick                  # tiny smoke run (tests)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pigeon.config import TrainConfig
from pigeon.data.augment import Augment
from pigeon.data.preprocess import normalize
from pigeon.engine.device import amp_dtype, autocast, select_device
from pigeon.engine.ema import EMA
from pigeon.engine.train import make_optimizer, train_step
from pigeon.models import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model_name: str, imgsz: int, batch: int, device: torch.device, steps: int, warmup: int) -> dict:
    channels = 3
    model = create_model(model_name, num_classes=10, in_chans=channels, imgsz=imgsz).to(device)
    model = model.to(memory_format=torch.channels_last)
    cfg = TrainConfig(data="synthetic", lr=0.1, weight_decay=5e-4)
    opt = make_optimizer(model, cfg)
    amp = amp_dtype(device, "auto")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ema = EMA(model, 0.999)
    gen = torch.Generator().manual_seed(0)
    augment = Augment(flip=0.5, translate=max(1, imgsz // 10), resized_crop=imgsz >= 64)
    images = torch.randint(0, 256, (batch, channels, imgsz, imgsz), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    mean = torch.full((channels,), 0.5, device=device)
    std = torch.full((channels,), 0.25, device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        x = normalize(augment(images, gen), mean, std).contiguous(memory_format=torch.channels_last)
        train_step(model, x, labels, opt, scaler, 0.1, amp, 0.1, 0.0)
        ema.update(model)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    model.eval()
    infer_times = []
    with torch.no_grad():
        for i in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            with autocast(device, amp):
                model(normalize(images, mean, std).contiguous(memory_format=torch.channels_last))
            _sync(device)
            if i >= warmup:
                infer_times.append(time.perf_counter() - start)
    return {"model": model_name, "imgsz": imgsz, "batch": batch, "amp": str(amp),
            "train_img_s": batch / statistics.median(times), "infer_img_s": batch / statistics.median(infer_times),
            "train_step_ms": {"median": 1000 * statistics.median(times), "min": 1000 * min(times),
                              "max": 1000 * max(times)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=["pigeon-n", "pigeon-s", "pigeon-m"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 224])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--name", default=None, help="results name (default: throughput-<device type>)")
    parser.add_argument("--quick", action="store_true", help="pigeon-n at 16 px, 2 steps; nothing saved")
    args = parser.parse_args()
    device = select_device(args.device)
    if args.quick:
        args.models, args.sizes, args.steps, args.warmup, args.batch = ["pigeon-n"], [16], 2, 1, 8
    rows = []
    for name in args.models:
        for size in args.sizes:
            r = measure(name, size, args.batch, device, args.steps, args.warmup)
            rows.append(r)
            print(f"{name} {size}px batch {args.batch}: train {r['train_img_s']:.0f} img/s, "
                  f"inference {r['infer_img_s']:.0f} img/s", flush=True)
    if args.quick:
        return
    from common import save

    table = ["| model | input | train img/s | inference img/s | train step ms (median, min-max) |",
             "|---|---|---|---|---|"]
    for r in rows:
        s = r["train_step_ms"]
        table.append(f"| {r['model']} | {r['imgsz']}x{r['imgsz']}x3 | {r['train_img_s']:.0f} | "
                     f"{r['infer_img_s']:.0f} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) |")
    table.append(f"\nBatch {args.batch}, {device.type}, amp {rows[0]['amp']}, channels-last, median of "
                 f"{args.steps} steps after {args.warmup} warm-up steps.")
    save(args.name or f"throughput-{device.type}", {"rows": rows}, "\n".join(table))


if __name__ == "__main__":
    main()
