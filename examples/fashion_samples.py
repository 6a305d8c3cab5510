"""Write a few Fashion-MNIST test images as PNG files (named by their true class) to try `pigeon predict` on."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from pigeon.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/demo-samples", help="folder to write the PNGs into")
    parser.add_argument("--count", type=int, default=8, help="how many test images")
    args = parser.parse_args()
    ds = load_dataset("fashion-mnist", verbose=False)
    test = ds.splits["test"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step = len(test) // args.count
    for i in range(0, step * args.count, step):
        name = ds.classes[int(test.labels[i])].replace("/", "-").replace(" ", "_")
        Image.fromarray(test.images[i, 0]).save(out / f"{i:05d}_{name}.png")
    print(f"wrote {args.count} test images to {out}")


if __name__ == "__main__":
    main()
