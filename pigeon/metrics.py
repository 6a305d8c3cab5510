"""Classification metrics as pure functions: top-k, confusion matrix, per-class precision/recall/F1.

Everything here takes plain tensors or arrays and returns plain numbers, so the engine, the CLI and the
server can share one definition of "accuracy", and the tests can check it against scikit-learn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """For each k, how many samples have their target among the k highest logits.

    k larger than the number of classes is clipped to it (then every sample counts), so callers can ask
    for top-5 on a 3-class problem without special-casing it. Keys are the ks as requested.
    """
    _check_logits(logits, targets)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got ks={ks}")
    if not ks:
        return {}
    num_classes = logits.shape[1]
    max_k = min(max(ks), num_classes)
    top = logits.topk(max_k, dim=1).indices  # [N, max_k], best first
    hits = top.eq(targets.reshape(-1, 1).to(top.device))
    # A target appears at most once in a row, so the cumulative count per column is 0 or 1.
    hit_by_rank = hits.cumsum(dim=1).sum(dim=0)  # hit_by_rank[j] = samples hit within top j+1
    return {k: int(hit_by_rank[min(k, num_classes) - 1]) for k in ks}


def confusion_matrix(
    preds: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, num_classes: int
) -> np.ndarray:
    """Counts [K, K], int64: row = true class, column = predicted class."""
    p = _as_int_array(preds, "preds")
    t = _as_int_array(targets, "targets")
    if p.shape != t.shape:
        raise ValueError(f"preds and targets must have the same length, got {p.shape} and {t.shape}")
    for name, arr in (("preds", p), ("targets", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got values from {arr.min()} to {arr.max()}"
            )
    # Each (true, pred) pair maps to one flat cell; bincount counts all cells in one pass.
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_prf(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (float64) and support (int64) per class; undefined ratios are 0.0."""
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [K, K] matrix, got shape {confusion.shape}")
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    # 2TP / (2TP + FP + FN) equals the harmonic mean of P and R, and is defined whenever either is.
    f1 = _safe_div(2 * tp, support + predicted)
    return precision, recall, f1, support


def classification_report(
    logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]
) -> dict[str, Any]:
    """Top-1/top-5 accuracy, macro F1, per-class scores and the confusion matrix, JSON-ready.

    Args:
        logits: [N, K] scores, any real values; only their order matters.
        targets: [N] true class indices.
        class_names: K names, in class-index order.

    Returns:
        {"n", "top1", "top5", "macro_f1", "balanced_accuracy", "worst_class", "per_class", "confusion"}.
        Accuracies are fractions in [0, 1]; "top5" is None unless there are more than 5 classes (with 5 or
        fewer it is always 1.0). Balanced accuracy is the mean recall of the classes present in `targets`;
        "worst_class" is the present class of lowest recall.
    """
    _check_logits(logits, targets)
    n, num_classes = logits.shape
    if n == 0:
        raise ValueError("cannot compute a classification report on zero samples (logits has N=0)")
    if len(class_names) != num_classes:
        raise ValueError(f"logits has {num_classes} classes but {len(class_names)} class names were given")
    correct = topk_correct(logits, targets, ks=(1, 5))
    preds = logits.argmax(dim=1)
    confusion = confusion_matrix(preds, targets, num_classes)
    precision, recall, f1, support = per_class_prf(confusion)
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    present = support > 0  # a class absent from this split has no recall to average
    worst = int(np.flatnonzero(present)[np.argmin(recall[present])]) if present.any() else 0
    return {
        "n": int(n),
        "top1": correct[1] / n,
        "top5": correct[5] / n if num_classes > 5 else None,
        "macro_f1": float(f1.mean()),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "worst_class": {"class": class_names[worst], "recall": float(recall[worst]), "support": int(support[worst])},
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Average precision of one class: the sum over score thresholds of (recall gained) x (precision there), with
    tied scores taken as one threshold (scikit-learn's `average_precision_score`); None when there is no
    positive, as then recall is undefined."""
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives).astype(bool)
    total = int(positives.sum())
    if total == 0:
        return None
    tp, predicted, _ = _ranked_counts(scores, positives)
    precision, recall = tp / predicted, tp / total
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def best_f1_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per class, the probability threshold (predict "yes" at or above it) of the highest F1 on these images:
    halfway between the lowest score kept and the next one below, so that a score between them is decided as the
    fit decided it. `default` for a class with no positive here, whose F1 cannot be fitted."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    out = np.full(probs.shape[1], default, dtype=np.float64)
    for k in range(probs.shape[1]):
        total = int(targets[:, k].sum())
        if total == 0:
            continue
        tp, predicted, cut = _ranked_counts(probs[:, k], targets[:, k])
        f1 = 2 * tp / (predicted + total)  # 2TP / (2TP + FP + FN), as FP + TP = predicted and FN + TP = total
        best = int(np.argmax(f1))
        below = cut[best + 1] if best + 1 < len(cut) else 0.0
        out[k] = (cut[best] + below) / 2
    return out


def _ranked_counts(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each distinct score, highest first: true positives and predictions at or above it, and the score."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positives[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tp = np.cumsum(hits)[last_of_tie].astype(np.float64)
    return tp, (last_of_tie + 1).astype(np.float64), ranked[last_of_tie]


def multilabel_report(logits: torch.Tensor, targets: np.ndarray | torch.Tensor, class_names: list[str],
                      thresholds: np.ndarray | list[float] | None = None) -> dict[str, Any]:
    """Multi-label scores of sigmoid outputs, JSON-ready: mAP and per-class AP (threshold-free); at the
    per-class `thresholds` (0.5 when not given) per-class precision/recall/F1, micro and macro F1, exact-match
    accuracy (every label of an image right) and Hamming accuracy (the share of image-class decisions right).

    Args:
        logits: [N, K] scores before the sigmoid.
        targets: [N, K] multi-hot truth (0/1).
    """
    probs = torch.sigmoid(logits.float()).numpy().astype(np.float64)
    truth = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).astype(bool)
    n, num_classes = probs.shape
    if truth.shape != probs.shape:
        raise ValueError(f"targets must be [N, K] = {list(probs.shape)} multi-hot rows, got {list(truth.shape)}")
    if n == 0:
        raise ValueError("cannot compute a multi-label report on zero samples (logits has N=0)")
    if len(class_names) != num_classes:
        raise ValueError(f"logits has {num_classes} classes but {len(class_names)} class names were given")
    thr = np.full(num_classes, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    pred = probs >= thr
    tp = (pred & truth).sum(0).astype(np.float64)
    predicted, support = pred.sum(0).astype(np.float64), truth.sum(0)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2 * tp, predicted + support)
    ap = [average_precision(probs[:, k], truth[:, k]) for k in range(num_classes)]
    present = [k for k in range(num_classes) if ap[k] is not None]
    worst = min(present, key=lambda k: ap[k]) if present else 0  # type: ignore[arg-type, return-value]
    # Training's loss: summed over classes, averaged over images.
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.float(), torch.as_tensor(truth, dtype=torch.float32), reduction="sum") / n
    return {
        "task": "multilabel",
        "n": int(n),
        "map": float(np.mean([ap[k] for k in present])) if present else 0.0,
        "micro_f1": float(_safe_div(np.array([2 * tp.sum()]), np.array([predicted.sum() + support.sum()]))[0]),
        "macro_f1": float(f1.mean()),
        "exact_match": float((pred == truth).all(1).mean()),
        "hamming_accuracy": float((pred == truth).mean()),
        "labels_per_image": float(truth.sum(1).mean()),
        "predicted_per_image": float(pred.sum(1).mean()),
        "loss": float(bce),
        "worst_class": {"class": class_names[worst], "ap": ap[worst], "support": int(support[worst])},
        "thresholds": [round(float(t), 6) for t in thr],
        "per_class": [{"class": name, "ap": ap[k], "precision": float(precision[k]), "recall": float(recall[k]),
                       "f1": float(f1[k]), "support": int(support[k]), "threshold": round(float(thr[k]), 6)}
                      for k, name in enumerate(class_names)],
    }


def format_multilabel_report(report: dict[str, Any]) -> str:
    rows = report["per_class"]
    width = min(max([len("class")] + [len(str(r["class"])) for r in rows]), 32)
    header = (f"{'class':<{width}}  {'AP':>7}  {'threshold':>9}  {'precision':>9}  {'recall':>9}  {'f1':>9}  "
              f"{'support':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        name = str(r["class"])
        name = name[: width - 1] + "…" if len(name) > width else name
        ap = "    n/a" if r["ap"] is None else f"{r['ap']:>7.4f}"
        lines.append(f"{name:<{width}}  {ap}  {r['threshold']:>9.3f}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  "
                     f"{r['f1']:>9.4f}  {r['support']:>8d}")
    lines.append("-" * len(header))
    lines.append(f"mAP {100 * report['map']:.2f}%   micro-F1 {100 * report['micro_f1']:.2f}%   macro-F1 "
                 f"{100 * report['macro_f1']:.2f}%   exact match {100 * report['exact_match']:.2f}%   Hamming "
                 f"accuracy {100 * report['hamming_accuracy']:.2f}%   samples {report['n']}")
    worst = report["worst_class"]
    lines.append(f"labels per image {report['labels_per_image']:.2f} (predicted {report['predicted_per_image']:.2f})"
                 + (f"   worst class {worst['class']} (AP {100 * worst['ap']:.2f}% of {worst['support']})"
                    if worst["ap"] is not None else ""))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """A fixed-width table of per-class scores followed by the overall numbers in percent."""
    if report.get("task") == "multilabel":
        return format_multilabel_report(report)
    rows = report["per_class"]
    width = min(max([len("class")] + [len(str(r["class"])) for r in rows]), 32)
    header = f"{'class':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        name = str(r["class"])
        if len(name) > width:
            name = name[: width - 1] + "…"
        scores = "  ".join(f"{r[key]:>9.4f}" for key in ("precision", "recall", "f1"))
        lines.append(f"{name:<{width}}  {scores}  {r['support']:>8d}")
    lines.append("-" * len(header))
    top5 = "n/a" if report["top5"] is None else f"{100 * report['top5']:.2f}%"
    top1, macro_f1 = 100 * report["top1"], 100 * report["macro_f1"]
    lines.append(f"top-1 {top1:.2f}%   top-5 {top5}   macro-F1 {macro_f1:.2f}%   samples {report['n']}")
    if "balanced_accuracy" in report:  # reports saved before pigeon had these lack them
        worst = report["worst_class"]
        lines.append(f"balanced accuracy {100 * report['balanced_accuracy']:.2f}%   worst class {worst['class']} "
                     f"(recall {100 * worst['recall']:.2f}% of {worst['support']})")
    if "calibration" in report:
        lines += format_confidence(report["calibration"])
    return "\n".join(lines)


def format_confidence(cal: dict[str, Any]) -> list[str]:
    """How well confidence matches accuracy, and what each --min-conf threshold costs, as lines of text."""
    if cal["temperature"] == 1.0:
        lines = [f"confidence: ECE {100 * cal['ece']:.2f}%   NLL {cal['nll']:.4f}   (plain softmax: not calibrated)"]
    else:
        lines = [f"calibration: temperature {cal['temperature']:.3f}   ECE {100 * cal['ece']:.2f}% "
                 f"(uncalibrated {100 * cal['ece_uncalibrated']:.2f}%)   NLL {cal['nll']:.4f} "
                 f"(uncalibrated {cal['nll_uncalibrated']:.4f})"]
    rows = [r for r in cal.get("thresholds", []) if r["target_coverage"] < 1.0]
    if rows:
        # Floored, so that the printed threshold answers at least the images it says it does.
        lines.append("to abstain below a confidence, pick --min-conf from this table:")
        lines += [f"  answer {100 * r['coverage']:5.1f}% of images at {100 * r['accuracy']:6.2f}% accuracy: "
                  f"--min-conf {math.floor(r['min_conf'] * 1000) / 1000:.3f}" for r in rows]
    if cal.get("abstain"):
        a = cal["abstain"]
        accuracy = "n/a" if a["accuracy_answered"] is None else f"{100 * a['accuracy_answered']:.2f}%"
        lines.append(f"--min-conf {a['min_conf']:g}: answered {a['answered']} of {a['answered'] + a['abstained']} "
                     f"({100 * a['coverage']:.1f}%) at {accuracy} accuracy; {a['abstained']} unknown")
    return lines


def _check_logits(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must be [N] with N={logits.shape[0]} to match logits, got shape {tuple(targets.shape)}"
        )


def _as_int_array(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # np.divide with `where` never evaluates 0/0, so no RuntimeWarning and no NaN to clean up.
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)
