"""PNG plots: training curves, confusion matrix, prediction grid, calibration.

matplotlib is imported inside each function, so importing pigeon costs nothing when no plot is drawn. We
draw on a bare Figure with the Agg canvas rather than pyplot: no global figure registry to leak, no
display backend to pick, safe to call from a server thread.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_GREEN, _RED = "#1a7f37", "#cf222e"


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike[str], split: str = "val") -> Path:
    """Loss (train, <split>) and accuracy (<split> top-1, top-5 when logged) against epoch, side by side.

    `split` names the evaluated split whose `<split>_loss`, `<split>_top1`, `<split>_top5` keys are drawn.
    Values may be numbers, numeric strings (rows read back from a CSV log) or None / "" when missing.
    """
    if not rows:
        raise ValueError("plot_curves needs at least one epoch row, got none")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    panels = (
        (loss_ax, "loss", (("train_loss", "train"), (f"{split}_loss", split))),
        (acc_ax, "accuracy", ((f"{split}_top1", f"{split} top-1"), (f"{split}_top5", f"{split} top-5"),
                              (f"{split}_map", f"{split} mAP"), (f"{split}_micro_f1", f"{split} micro-F1"))),
    )
    for ax, ylabel, series in panels:
        for key, label in series:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    return _save(fig, path)


def plot_confusion(
    confusion: np.ndarray,
    class_names: list[str],
    path: str | os.PathLike[str],
    normalize: bool = True,
) -> Path:
    """Heat map of the confusion matrix (rows = true, columns = predicted), row-normalized by default.

    Row-normalized cells are per-class recall, so rare classes are as visible as common ones. Cell values
    are written for up to 20 classes; tick labels shrink with K and are thinned beyond 100 classes.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion must be [{k}, {k}] to match {k} class names, got shape {counts.shape}")
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        # A class absent from the targets has an all-zero row; leave it zero instead of 0/0.
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        values = counts
    from matplotlib.figure import Figure

    side = min(4.0 + 0.22 * k, 30.0)  # inches; about 100 classes fit legibly at the cap
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="recall" if normalize else "count")

    cell_pt = 72.0 * 0.8 * side / max(k, 1)  # roughly one matrix row, in points
    fontsize = float(np.clip(0.55 * cell_pt, 4.0, 10.0))
    # The figure stops growing at the cap, so past ~100 rows every label would overlap its neighbours.
    step = 1 if k <= 100 else math.ceil(k / 50)
    ticks = np.arange(0, k, step)
    ax.set_xticks(ticks, [class_names[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [class_names[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix, row-normalized (recall)" if normalize else "confusion matrix (counts)")

    if k <= 20:
        for (i, j), v in np.ndenumerate(values):
            text = f"{v:.2f}" if normalize else f"{int(v)}"
            colour = "white" if v > 0.6 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize * 0.9, color=colour)
    return _save(fig, path)


def plot_prediction_grid(
    images: np.ndarray,
    true_labels: list[str],
    pred_labels: list[str],
    confidences: list[float],
    path: str | os.PathLike[str],
    max_images: int = 25,
    overlay_row: list[tuple[np.ndarray, str]] | None = None,
) -> Path:
    """A square-ish grid of images titled "pred (conf%)" / "true: X", green when right, red when wrong.

    Args:
        images: uint8 [N, C, H, W] with C = 1 (grayscale) or 3 (RGB).
        true_labels, pred_labels: N class names each.
        confidences: N probabilities in [0, 1] for the predicted class.
        path: where the PNG goes.
        max_images: draw only the first this many.
        overlay_row: (uint8 HWC RGB image, title) pairs drawn as one more row, in red: the Grad-CAM overlays
            of misclassified images (pigeon.saliency.misclassified_overlays).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 [N, C, H, W] with C in (1, 3), got {images.dtype} {tuple(images.shape)}"
        )
    n_all = images.shape[0]
    if not len(true_labels) == len(pred_labels) == len(confidences) == n_all:
        raise ValueError(
            f"need one true label, predicted label and confidence per image ({n_all} images), got "
            f"{len(true_labels)}, {len(pred_labels)} and {len(confidences)}"
        )
    n = min(n_all, max_images)
    if n < 1:
        raise ValueError("plot_prediction_grid needs at least one image (and max_images >= 1)")
    from matplotlib.figure import Figure

    cols = math.ceil(math.sqrt(n))
    grid_rows = math.ceil(n / cols)
    extra = list(overlay_row or [])[:cols]
    cells = [(images[i].transpose(1, 2, 0), _title(pred_labels[i], confidences[i], true_labels[i]),
              _GREEN if pred_labels[i] == true_labels[i] else _RED) for i in range(n)]
    cells += [(pixels, title, _RED) for pixels, title in extra]
    rows = grid_rows + bool(extra)
    # One canvas of pixels under one invisible axes, with the titles as text: a matplotlib axes per image cost
    # about 60 ms each to build and lay out, 2 s of the end of every training run for a 25-image grid.
    canvas = np.full((rows * _CELL_H, cols * _CELL_W, 3), 255, dtype=np.uint8)
    fig = Figure(figsize=(cols * _CELL_W / _DPI, rows * _CELL_H / _DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    for index, (pixels, title, colour) in enumerate(cells):
        row, col = (index // cols, index % cols) if index < n else (grid_rows, index - n)
        top, left = row * _CELL_H + _TITLE_H, col * _CELL_W + (_CELL_W - _IMAGE) // 2
        fitted = _fit(pixels, _IMAGE)
        dy, dx = (_IMAGE - fitted.shape[0]) // 2, (_IMAGE - fitted.shape[1]) // 2
        canvas[top + dy:top + dy + fitted.shape[0], left + dx:left + dx + fitted.shape[1]] = fitted
        ax.text(col * _CELL_W + _CELL_W / 2, top - 4, title, fontsize=8, color=colour, ha="center", va="bottom")
    ax.imshow(canvas, extent=(0, canvas.shape[1], canvas.shape[0], 0), interpolation="nearest")
    ax.set_xlim(0, canvas.shape[1])
    ax.set_ylim(canvas.shape[0], 0)
    return _save(fig, path)


_DPI, _CELL_W, _CELL_H, _TITLE_H, _IMAGE = 100, 220, 250, 34, 206  # pixels of one grid cell at 100 dpi


def _title(pred: str, confidence: float, true: str) -> str:
    return f"{pred} ({100 * confidence:.1f}%)\ntrue: {true}"


def _fit(pixels: np.ndarray, side: int) -> np.ndarray:
    """HWC uint8 (C = 1 or 3) scaled by nearest neighbour to fit a side x side square, as RGB."""
    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    ys = np.minimum((np.arange(out_h) / scale).astype(int), h - 1)
    xs = np.minimum((np.arange(out_w) / scale).astype(int), w - 1)
    scaled = pixels[ys][:, xs]
    return np.repeat(scaled, 3, axis=2) if scaled.shape[2] == 1 else scaled


def plot_calibration(cal: dict[str, Any], path: str | os.PathLike[str], split: str = "val") -> Path:
    """Two panels from a report's `calibration`: the reliability diagram (accuracy against confidence per
    bin, before and after the temperature) and the risk-coverage curve (accuracy of the answered images
    against the fraction answered)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    rel_ax, cov_ax = fig.subplots(1, 2)
    rel_ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    series = [("reliability_uncalibrated", f"softmax (ECE {100 * cal['ece_uncalibrated']:.2f}%)", _RED)]
    if cal["temperature"] != 1.0:
        series.append(("reliability", f"temperature {cal['temperature']:.2f} (ECE {100 * cal['ece']:.2f}%)",
                       _GREEN))
    for key, label, color in series:
        bins = [b for b in cal.get(key, []) if b["count"]]
        rel_ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", markersize=4,
                    color=color, label=label)
    rel_ax.set_xlabel("confidence (mean per bin)")
    rel_ax.set_ylabel("accuracy")
    rel_ax.set_title(f"reliability on {split}")
    rel_ax.set_xlim(0, 1)
    rel_ax.set_ylim(0, 1.02)
    rel_ax.grid(alpha=0.3)
    rel_ax.legend(loc="upper left")
    curve = cal.get("risk_coverage", [])
    cov_ax.plot([100 * c["coverage"] for c in curve], [100 * c["accuracy"] for c in curve], color=_GREEN)
    cov_ax.set_xlabel("images answered (%), most confident first")
    cov_ax.set_ylabel("accuracy of the answered images (%)")
    cov_ax.set_title("risk-coverage: what --min-conf costs")
    cov_ax.set_xlim(0, 100)
    cov_ax.grid(alpha=0.3)
    return _save(fig, path)


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for the rows where both the epoch and `key` are present."""
    xs: list[float] = []
    ys: list[float] = []
    for index, row in enumerate(rows):
        value = row.get(key)
        if value is None or value == "":
            continue
        epoch = row.get("epoch")
        xs.append(float(index if epoch is None or epoch == "" else epoch))
        ys.append(float(value))
    return xs, ys


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render to a temp file beside `path`, then rename: readers never see a half-written PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pigeon.io import atomic_path

    final = Path(path)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    with atomic_path(final) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return final
