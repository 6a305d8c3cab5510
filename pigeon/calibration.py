"""Calibrated probabilities and knowing when not to answer, as pure functions over logits and labels.

A network trained with cross-entropy is usually over-confident: among the images it calls 95% sure, fewer
than 95% are right. One temperature T, fitted on the validation split (softmax(logits / T)), fixes most of
that without changing a single prediction, since dividing every logit by T keeps their order. The confidence
that results is what `--min-conf` compares against, and the risk-coverage curve shows what each threshold
costs: how many images go unanswered, and how accurate the answered ones are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

UNKNOWN = "unknown"  # the label of an image whose confidence is below --min-conf
ECE_BINS = 15
COVERAGES = (1.0, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.5)  # rows of the threshold table
T_RANGE = (0.05, 20.0)
MIN_IMAGES = 50  # fewer validation images than this give a temperature that is mostly noise


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.double() / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature that minimises NLL on these logits (the validation split's), within T_RANGE.

    NLL is convex in 1/T, so it has one minimum along log T as well; a golden-section search finds it
    without gradients, step sizes or the failure modes of an optimizer started at a poor point.
    """
    if len(targets) == 0:
        raise ValueError("cannot fit a temperature on zero samples")
    z, y = logits.double(), targets.long()
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):  # the bracket shrinks by 0.618 each time: 60 steps reach 1e-12 of log T
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def reliability(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins: for each, how many images fall in it, their mean confidence and accuracy."""
    conf, pred = probs.max(1)
    correct = pred.eq(targets).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bin i holds (edge_i, edge_i+1]; a confidence of exactly 0 cannot happen with a softmax.
    index = torch.clamp(torch.bucketize(conf.double(), edges, right=False) - 1, 0, bins - 1)
    rows = []
    for i in range(bins):
        inside = index == i
        count = int(inside.sum())
        rows.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": count,
                     "confidence": float(conf[inside].double().mean()) if count else None,
                     "accuracy": float(correct[inside].mean()) if count else None})
    return rows


def ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over the bins."""
    n = len(targets)
    return sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in reliability(probs, targets, bins)
               if r["count"]) if n else 0.0


def risk_coverage(conf: np.ndarray, correct: np.ndarray, points: int = 101) -> list[dict[str, float]]:
    """Accuracy of the answered images against the fraction answered, most confident answered first.

    Sampled at `points` evenly spaced coverages (plus full coverage), so the curve stays small in a report.
    """
    order = np.argsort(-np.asarray(conf, dtype=np.float64), kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    n = len(order)
    if n == 0:
        return []
    counts = np.unique(np.clip(np.round(np.linspace(0, 1, points) * n).astype(int), 1, n))
    sorted_conf = np.asarray(conf, dtype=np.float64)[order]
    return [{"coverage": k / n, "accuracy": float(hits[k - 1] / k), "threshold": float(sorted_conf[k - 1])}
            for k in counts]


def threshold_table(conf: np.ndarray, correct: np.ndarray,
                    coverages: tuple[float, ...] = COVERAGES) -> list[dict[str, float]]:
    """For each target coverage: the --min-conf that answers at least that fraction, and the accuracy then.

    The threshold is the confidence of the last image answered, so `--min-conf` at it answers exactly those
    images (ties at the threshold are all answered, which can only raise the coverage).
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(conf)
    if n == 0:
        return []
    sorted_conf = np.sort(conf)[::-1]
    rows = []
    for target in coverages:
        threshold = float(sorted_conf[max(1, math.ceil(target * n)) - 1])
        answered = conf >= threshold
        rows.append({"target_coverage": target, "min_conf": threshold, "coverage": float(answered.mean()),
                     "accuracy": float(correct[answered].mean())})
    return rows


def abstain_summary(conf: np.ndarray, correct: np.ndarray, min_conf: float) -> dict[str, Any]:
    """What `--min-conf` does on labelled images: how many it answers and how accurate those answers are."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    answered = conf >= min_conf
    count = int(answered.sum())
    return {"min_conf": min_conf, "answered": count, "abstained": int(len(conf) - count),
            "coverage": count / len(conf) if len(conf) else 0.0,
            "accuracy_answered": float(correct[answered].mean()) if count else None}


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of a score meant to be higher for `positive` (ties count one half).

    It equals the probability that a random positive outscores a random negative (Mann-Whitney U).
    """
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("AUROC needs at least one score of each kind")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    # Tied scores share the mean of their ranks.
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    u = ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                       min_conf: float | None = None) -> dict[str, Any]:
    """What a validation report says about confidence: ECE and NLL with and without the temperature, the
    reliability bins, the risk-coverage curve and the threshold table (all at the temperature), and what
    `min_conf` does when one is given."""
    probs = (logits.double() / temperature).softmax(1)
    conf, pred = probs.max(1)
    correct = pred.eq(targets).numpy()
    out: dict[str, Any] = {
        "temperature": temperature,
        "ece": ece(probs, targets), "nll": nll(logits, targets, temperature),
        "ece_uncalibrated": ece(logits.double().softmax(1), targets), "nll_uncalibrated": nll(logits, targets),
        "reliability": reliability(probs, targets),
        "reliability_uncalibrated": reliability(logits.double().softmax(1), targets),
        "risk_coverage": risk_coverage(conf.numpy(), correct),
        "thresholds": threshold_table(conf.numpy(), correct),
    }
    if min_conf is not None:
        out["abstain"] = abstain_summary(conf.numpy(), correct, min_conf)
    return out


def thresholds_of(meta: dict[str, Any]) -> list[float]:
    """A multi-label model's per-class decision thresholds: the checkpoint's (or export's), else 0.5 each."""
    found = meta.get("thresholds") or {}
    values = found.get("values") if isinstance(found, dict) else None
    return [float(v) for v in values] if values else [0.5] * len(meta["classes"])


def present_classes(probs: np.ndarray, thresholds: np.ndarray) -> list[int]:
    """A multi-label answer: the classes at or above their thresholds, most probable first (ties in class order)."""
    return [int(i) for i in np.argsort(-probs, kind="stable") if probs[i] >= thresholds[i]]


def temperature_of(meta: dict[str, Any]) -> float:
    """The temperature to divide a model's logits by before the softmax: the checkpoint's fitted one, or 1.

    An export already divides inside its graph (so its logits are calibrated for any runtime that reads
    them), which its metadata records as `applied_in_graph`.
    """
    calibration = meta.get("calibration") or {}
    if calibration.get("applied_in_graph"):
        return 1.0
    return float(calibration.get("temperature", 1.0))


def why_not_calibrate(logits: torch.Tensor, targets: torch.Tensor) -> str | None:
    """A reason the temperature cannot be fitted honestly on this split, or None when it can."""
    if len(targets) < MIN_IMAGES:
        return f"the validation split has {len(targets)} images, fewer than the {MIN_IMAGES} a temperature needs"
    if bool(logits.argmax(1).eq(targets).all()):
        # With no mistake to be unsure about, NLL falls as T -> 0: the fit would make every answer certain.
        return "the model makes no mistake on the validation split, so there is no over- or under-confidence to fit"
    return None

