"""Multi-label metrics against scikit-learn's definitions, and the per-class thresholds against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from pigeon.metrics import average_precision, best_f1_thresholds, format_report, multilabel_report


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_equals_scikit_learn_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for levels in (4, 1000):  # 4 levels: many tied scores
        scores = rng.integers(0, levels, size=60) / levels
        truth = rng.random(60) < 0.3
        assert average_precision(scores, truth) == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
    assert average_precision(np.array([0.2, 0.9]), np.array([0, 0])) is None


def test_the_report_equals_scikit_learn_at_the_given_thresholds() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((200, 6)) < 0.3).astype(np.uint8)
    logits = torch.tensor(2.5 * (truth - 0.5) + rng.normal(0, 1.2, truth.shape), dtype=torch.float32)
    thresholds = rng.uniform(0.3, 0.7, 6)
    report = multilabel_report(logits, truth, list("abcdef"), thresholds)
    probs = torch.sigmoid(logits).numpy().astype(np.float64)
    pred = (probs >= thresholds).astype(np.uint8)
    assert report["map"] == pytest.approx(np.mean([average_precision_score(truth[:, k], probs[:, k])
                                                   for k in range(6)]), abs=1e-9)
    assert report["exact_match"] == pytest.approx(accuracy_score(truth, pred))
    assert report["hamming_accuracy"] == pytest.approx(1 - hamming_loss(truth, pred))
    assert report["micro_f1"] == pytest.approx(f1_score(truth, pred, average="micro"))
    assert report["macro_f1"] == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
    assert [r["f1"] for r in report["per_class"]] == pytest.approx(f1_score(truth, pred, average=None))
    assert report["loss"] == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor(truth, dtype=torch.float32), reduction="sum")) / 200, rel=1e-5)
    assert report["thresholds"] == pytest.approx(list(thresholds), abs=1e-6)
    worst = min(report["per_class"], key=lambda r: r["ap"])
    assert report["worst_class"]["class"] == worst["class"]
    text = format_report(report)
    assert "mAP" in text and "exact match" in text and len(text.splitlines()) == 2 + 6 + 3  # a row per class


def test_a_class_with_no_positive_has_no_ap_and_is_left_out_of_the_mean() -> None:
    truth = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.uint8)
    logits = torch.tensor([[3.0, 0.0], [-3.0, 1.0], [2.0, -1.0]])
    report = multilabel_report(logits, truth, ["a", "b"])
    assert report["per_class"][1]["ap"] is None and report["map"] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_each_threshold_reaches_the_best_f1_any_cut_reaches(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random((80, 4)) < 0.35
    probs = np.clip(0.5 * truth + rng.uniform(0, 0.6, truth.shape), 0, 1)
    probs[:10, 0] = 0.5  # ties
    thresholds = best_f1_thresholds(probs, truth)
    for k in range(4):
        def f1_at(t: float, k: int = k) -> float:
            return f1_score(truth[:, k], probs[:, k] >= t, zero_division=0)

        best = max(f1_at(t) for t in np.unique(probs[:, k]))
        assert f1_at(thresholds[k]) == pytest.approx(best)
        # Halfway to the next score below: no score sits on the threshold itself unless tied there.
        assert not np.isclose(probs[:, k], thresholds[k]).any() or np.isclose(thresholds[k], 0.5)
    assert best_f1_thresholds(probs[:, :1], np.zeros((80, 1), bool), default=0.5).tolist() == [0.5]
