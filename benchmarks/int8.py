"""INT8 export schemes: agreement with fp32, accuracy, speed and whether they can saturate without VNNI.

For each checkpoint (by default two trained here: scikit-learn's digits built-in and a Fashion-MNIST subset
written as PNG folders), exports every `--int8-scheme` and measures on the whole evaluation split:
top-1 agreement with PyTorch fp32, max |delta prob|, both accuracies, batch-64 throughput on this CPU, and the
largest |int8 weight|, which decides whether onnxruntime's U8S8 kernel can saturate on a CPU without VNNI
(2 x 255 x max|w| must stay under 32,768).

    python benchmarks/int8.py [--quick] [--model CKPT ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import cpu_flags, save, write_png_folder

import pigeon
from pigeon.deploy.exporter import INT8_RECIPES

SCHEMES = list(INT8_RECIPES)


def int8_weight_peak(path: Path) -> int:
    """The largest |value| among the quantized weights that feed a Conv, Gemm or MatMul."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = {name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") for name in n.input}
    peak = 0
    for node in model.graph.node:
        if (node.op_type == "DequantizeLinear" and node.output[0] in consumers and node.input[0] in inits
                and inits[node.input[0]].dtype.itemsize == 1):  # 8-bit weights, not the int32 biases
            w = inits[node.input[0]].astype(np.int64)
            if len(node.input) > 2 and node.input[2] in inits:  # zero point (0 for symmetric int8 weights)
                zp = inits[node.input[2]].astype(np.int64)
                w = w - (zp.reshape(-1, *([1] * (w.ndim - 1))) if zp.ndim else zp)
            peak = max(peak, int(np.abs(w).max()))
    return peak


def throughput(clf: Any, images: np.ndarray, seconds: float) -> float:
    batch = images[:64]
    clf.probabilities(batch)  # warm
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        clf.probabilities(batch)
        times.append(time.perf_counter() - t)
    return len(batch) / statistics.median(times)


def train_checkpoints(work: Path, quick: bool) -> dict[str, tuple[Path, str]]:
    """name -> (checkpoint, data to check on): the digits built-in, and a Fashion-MNIST subset as PNGs
    (6,000 train, 2,000 of the test images as val); `quick`: digits alone, one epoch."""
    from pigeon.data import load_dataset

    common = {"device": "cpu", "verbose": False, "plots": False, "project": str(work / "runs"), "seed": 0}
    cases: list[tuple[str, str, int]] = [("digits", "digits", 1 if quick else 15)]
    if not quick:
        fm = load_dataset("fashion-mnist", verbose=False)
        train, test = fm.splits["train"], fm.splits["test"]
        folder = write_png_folder(work / "fashion-subset", list(fm.classes),
                                  {"train": (train.images[:6000], train.labels[:6000]),
                                   "val": (test.images[:2000], test.labels[:2000])})
        cases.append(("fashion-subset", str(folder), 10))
    out = {}
    for name, data, epochs in cases:
        run = pigeon.train(data, epochs=epochs, name=name, **common)
        out[name] = (run.best, data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="*", help="checkpoints to export (default: train two here)")
    parser.add_argument("--quick", action="store_true", help="tiny models and data: a smoke test, not a figure")
    parser.add_argument("--out", help="write JSON here instead of benchmarks/results (the smoke test uses it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = ({Path(m).parent.parent.name: (Path(m), None) for m in args.model} if args.model
                  else train_checkpoints(work, args.quick))
        rows = []
        for name, (ckpt, data) in models.items():
            for scheme in SCHEMES:
                result = pigeon.export(ckpt, format="onnx", int8=True, int8_scheme=scheme, data=data,
                                       check_images=100 if args.quick else 100_000, int8_max_drop=1.0,
                                       out=str(work / f"{name}-{scheme}.onnx"), verbose=False)
                parity = result.parity or {}
                clf = pigeon.load(result.path)
                shape = result.contract["input"]["shape"][1:]
                images = np.random.default_rng(0).integers(0, 256, (64, *shape), dtype=np.uint8)
                peak = int8_weight_peak(result.path)
                row = {"model": name, "scheme": scheme, **parity, "weight_peak": peak,
                       "worst_pair_sum": 2 * 255 * peak, "can_saturate_without_vnni":
                       INT8_RECIPES[scheme]["weights"] == "int8" and 2 * 255 * peak > 32767,
                       "img_s_batch64": throughput(clf, images, 0.05 if args.quick else 2.0)}
                rows.append(row)
                print(f"{name:<15} {scheme:<10} agreement {row['top1_agreement']:.2%}  max|dp| "
                      f"{row['max_abs_prob_diff']:.3f}  top-1 {row['torch_top1']:.2%} -> {row['export_top1']:.2%}  "
                      f"|w|<={peak}  {row['img_s_batch64']:.0f} img/s", flush=True)
    table = ["| model | scheme | images | top-1 agreement with fp32 | max abs prob diff | fp32 top-1 | INT8 top-1 | "
             "max abs int8 weight | can saturate without VNNI | batch-64 img/s here |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | `{r['scheme']}` | {r['images']} | {r['top1_agreement']:.2%} | "
              f"{r['max_abs_prob_diff']:.3f} | {r['torch_top1']:.2%} | {r['export_top1']:.2%} | {r['weight_peak']} | "
              f"{'yes' if r['can_saturate_without_vnni'] else 'no'} | {r['img_s_batch64']:.0f} |" for r in rows]
    table.append(f"\nCPU flags: {cpu_flags()}. Agreement and accuracy on the whole evaluation split (val, "
                 "else test) of each model's data; onnxruntime runs its VNNI kernels on this CPU, so the "
                 "saturation column is the arithmetic bound (2 x 255 x max|w| > 32,767), not a measurement. img/s: 2 s "
                 "per row, random batches; on a shared machine it varies with the other load, so it is no ranking.")
    if args.out:
        Path(args.out).write_text(__import__("json").dumps({"rows": rows}, indent=2))
    else:
        save("int8", {"rows": rows, "quick": args.quick}, "\n".join(table))


if __name__ == "__main__":
    main()
