"""The CPU training-speed levers behind pigeon-n's design, each measured as a ratio in one run.

Times the plain training step (forward, backward, SGD) on a Fashion-MNIST-shaped batch for variants that
differ in one respect from pigeon-n as shipped.

    python benchmarks/levers.py
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/levers.py --fp32   # the path of an AVX2-only CPU (no bf16)

`--fp32` measures the fp32 recipe pigeon picks where the CPU has no native bf16 (channels-last, fp32) and
the narrower and plainer variants against it, into its own table (levers-fp32), stamped with the CPU flags
and any oneDNN ISA limit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import cpu_flags, save
from torch.nn import functional as F

from pigeon.models.pigeonnet import VARIANTS, PigeonNet


def images_per_second(model: torch.nn.Module, bf16: bool, channels_last: bool, batch: int = 256,
                      steps: int = 10) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def fp32_variants() -> dict[str, tuple[torch.nn.Module, bool, bool]]:
    widths, depths = VARIANTS["pigeon-n"]
    shipped = lambda: PigeonNet(widths, depths, 10, 1, 28)  # noqa: E731
    return {
        "pigeon-n, fp32, channels-last (what amp auto runs without native bf16)": (shipped(), False, True),
        "fp32, contiguous memory": (shipped(), False, False),
        "widening conv before the pool (no pool-first, no fold)": (PigeonNet(widths, depths, 10, 1, 28,
                                                                              pool_first=False), False, True),
        "widths 16, 32, 64": (PigeonNet((16, 32, 64), depths, 10, 1, 28), False, True),
        "widths 16, 32, 64, contiguous memory": (PigeonNet((16, 32, 64), depths, 10, 1, 28), False, False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", action="store_true", help="the fp32 recipe and its variants (levers-fp32)")
    args = parser.parse_args()
    widths, depths = VARIANTS["pigeon-n"]
    shipped = lambda: PigeonNet(widths, depths, 10, 1, 28)  # noqa: E731
    variants = fp32_variants() if args.fp32 else {
        "pigeon-n as shipped (bf16, channels-last, pool-first, pool folded into the stem)": (shipped(), True, True),
        "fp32, contiguous memory": (shipped(), False, False),
        "bf16, contiguous memory": (shipped(), True, False),
        "widening conv before the pool (no pool-first, no fold)": (PigeonNet(widths, depths, 10, 1, 28,
                                                                              pool_first=False), True, True),
        "widths 16, 32, 64 (not multiples of 32)": (PigeonNet((16, 32, 64), depths, 10, 1, 28), True, True),
    }
    rows, base = [], None
    for name, (model, bf16, cl) in variants.items():
        ips = images_per_second(model, bf16, cl)
        base = base or ips
        rows.append({"variant": name, "img_s": ips, "vs_shipped": ips / base})
        print(f"{name}: {ips:.0f} img/s ({ips / base:.2f}x)", flush=True)
    table = ["| variant | train img/s | relative to shipped |", "|---|---|---|"]
    table += [f"| {r['variant']} | {r['img_s']:.0f} | {r['vs_shipped']:.2f}x |" for r in rows]
    table.append("\nBatch 256 of 1x28x28, median of 10 steps after 3 warm-up steps, 2 threads as PyTorch chooses; "
                 f"CPU flags: {cpu_flags()}.")
    save("levers-fp32" if args.fp32 else "levers", {"rows": rows, "fp32": args.fp32}, "\n".join(table))


if __name__ == "__main__":
    main()
