"""A small real multi-label dataset for tests: 2x2 mosaics of scikit-learn's 8x8 digits, written as PNG files with
a labels CSV, as a user would bring one. An image's labels are the digits in its cells; a cell may be blank."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from pigeon.data.builtins import digits_arrays


def mosaic_arrays(n: int, seed: int, blank: float = 0.4) -> tuple[np.ndarray, list[list[int]]]:
    """n uint8 [16, 16] mosaics and each one's sorted digit labels (never empty)."""
    images, digits = digits_arrays()
    pixels = np.clip(images * 16, 0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 16, 16), dtype=np.uint8)
    labels: list[list[int]] = []
    for i in range(n):
        present: set[int] = set()
        cells = rng.random(4) >= blank
        if not cells.any():
            cells[rng.integers(4)] = True
        for cell in np.flatnonzero(cells):
            pick = int(rng.integers(len(digits)))
            r, c = divmod(int(cell), 2)
            out[i, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = pixels[pick]
            present.add(int(digits[pick]))
        labels.append(sorted(present))
    return out, labels


def write_mosaics(root: Path, counts: dict[str, int] | None = None, seed: int = 0, split_column: bool = True,
                  csv_name: str = "labels.csv") -> Path:
    """PNGs under root/img/ and root/<csv_name> with file,labels[,split]; counts per split (default train 500,
    val 150, test 150). Without `split_column` every row is training data."""
    counts = counts or {"train": 500, "val": 150, "test": 150}
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for offset, (split, n) in enumerate(counts.items()):
        arrays, labels = mosaic_arrays(n, seed + 1000 * offset)
        for i, (arr, lab) in enumerate(zip(arrays, labels)):
            name = f"img/{split}_{i:04d}.png"
            Image.fromarray(arr, mode="L").save(root / name)
            rows.append({"file": name, "labels": ";".join(str(d) for d in lab), "split": split})
    path = root / csv_name
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "labels", "split"] if split_column else ["file", "labels"])
        writer.writeheader()
        writer.writerows(rows if split_column else [{k: r[k] for k in ("file", "labels")} for r in rows])
    return path
