"""pigeon.metrics checked against scikit-learn and plain NumPy on random problems."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from pigeon.metrics import classification_report, confusion_matrix, format_report, per_class_prf, topk_correct

SEEDS = (0, 1, 2)
CLASS_COUNTS = (2, 3, 5, 6, 10, 37)


def _problem(seed: int, k: int, n: int = 150, absent: bool = False, never_predicted: bool = False):
    """Random logits/targets; optionally the last class never occurs and class 0 is never predicted."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen)
    high = k - 1 if absent else k
    targets = torch.randint(0, high, (n,), generator=gen)
    if never_predicted:
        logits[:, 0] = -1e9
    return logits, targets


def _reference_topk(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    """Independent definition: the target's rank is how many logits beat it."""
    scores = logits.numpy()
    target_scores = scores[np.arange(len(scores)), targets.numpy()]
    rank = (scores > target_scores[:, None]).sum(axis=1)
    return int((rank < k).sum())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", CLASS_COUNTS)
def test_topk_correct_matches_references(seed: int, k: int) -> None:
    logits, targets = _problem(seed, k)
    ks = (1, 2, 5, 10)
    got = topk_correct(logits, targets, ks)
    assert set(got) == set(ks)
    for kk in ks:
        assert got[kk] == _reference_topk(logits, targets, kk)
        if kk >= k:
            assert got[kk] == len(targets)  # clipped: every target is within all classes
        elif k > 2:
            # sklearn takes a 1-D score for binary problems, so it checks only k > 2.
            expected = skm.top_k_accuracy_score(
                targets.numpy(), logits.numpy(), k=kk, labels=np.arange(k), normalize=False
            )
            assert got[kk] == int(expected)
    assert got[1] == int((logits.argmax(1) == targets).sum())


def test_topk_correct_edge_cases() -> None:
    empty = topk_correct(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert empty == {1: 0, 5: 0}
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]])
    assert topk_correct(logits, torch.tensor([2, 1]), ks=(1, 2, 3)) == {1: 0, 2: 1, 3: 2}
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_correct(logits, torch.tensor([0, 1]), ks=(0,))
    with pytest.raises(ValueError, match="targets"):
        topk_correct(logits, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", CLASS_COUNTS)
@pytest.mark.parametrize(
    "absent,never_predicted", [(False, False), (True, False), (False, True), (True, True)]
)
def test_confusion_and_prf_match_sklearn(seed: int, k: int, absent: bool, never_predicted: bool) -> None:
    logits, targets = _problem(seed, k, absent=absent, never_predicted=never_predicted)
    preds = logits.argmax(1)
    labels = np.arange(k)

    confusion = confusion_matrix(preds, targets, k)
    expected = skm.confusion_matrix(targets.numpy(), preds.numpy(), labels=labels)
    assert confusion.dtype == np.int64 and confusion.shape == (k, k)
    np.testing.assert_array_equal(confusion, expected)
    # numpy inputs give the same answer as tensors
    np.testing.assert_array_equal(confusion_matrix(preds.numpy(), targets.numpy(), k), expected)

    precision, recall, f1, support = per_class_prf(confusion)
    ref = skm.precision_recall_fscore_support(
        targets.numpy(), preds.numpy(), labels=labels, zero_division=0, average=None
    )
    for got, want in zip((precision, recall, f1, support), ref, strict=True):
        assert not np.isnan(got).any()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    if absent:
        assert support[-1] == 0 and recall[-1] == 0.0
    if never_predicted:
        assert confusion[:, 0].sum() == 0 and precision[0] == 0.0


def test_confusion_matrix_by_hand_and_bad_input() -> None:
    preds = np.array([0, 1, 1, 2, 2, 2])
    targets = np.array([0, 0, 1, 1, 2, 0])
    np.testing.assert_array_equal(confusion_matrix(preds, targets, 3), [[1, 1, 1], [0, 1, 1], [0, 0, 1]])
    assert confusion_matrix(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2).sum() == 0
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        confusion_matrix(preds, np.array([0, 0, 1, 1, 3, 0]), 3)
    with pytest.raises(ValueError, match="preds must lie"):
        confusion_matrix(np.array([-1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.array([0.5]), np.array([0]), 3)
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)


def test_per_class_prf_by_hand() -> None:
    # true 0: 3 samples, 2 right; true 1: 1 sample, predicted 0; class 2: absent and never predicted
    precision, recall, f1, support = per_class_prf(np.array([[2, 1, 0], [1, 0, 0], [0, 0, 0]]))
    np.testing.assert_allclose(precision, [2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(recall, [2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(f1, [2 / 3, 0.0, 0.0])
    np.testing.assert_array_equal(support, [3, 1, 0])
    with pytest.raises(ValueError, match="square"):
        per_class_prf(np.zeros((2, 3), dtype=np.int64))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", CLASS_COUNTS)
def test_classification_report_matches_sklearn(seed: int, k: int) -> None:
    logits, targets = _problem(seed, k, absent=seed == 1, never_predicted=seed == 2)
    names = [f"class_{i}" for i in range(k)]
    report = classification_report(logits, targets, names)
    y_true, y_pred = targets.numpy(), logits.argmax(1).numpy()
    labels = np.arange(k)

    assert report["n"] == len(targets)
    assert report["top1"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    if k > 5:
        expected = skm.top_k_accuracy_score(y_true, logits.numpy(), k=5, labels=labels)
        assert report["top5"] == pytest.approx(expected, abs=1e-12)
    else:
        assert report["top5"] is None
    macro = skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert report["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert report["confusion"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert [row["class"] for row in report["per_class"]] == names
    assert [row["support"] for row in report["per_class"]] == np.bincount(y_true, minlength=k).tolist()
    for key in ("top1", "macro_f1"):
        assert 0.0 <= report[key] <= 1.0

    # Must survive a JSON round trip unchanged: plain ints, floats, strings, None and lists only.
    assert json.loads(json.dumps(report)) == report


def test_classification_report_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="zero samples"):
        classification_report(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        classification_report(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), ["a", "b"])
    with pytest.raises(ValueError, match=r"logits must be \[N, K\]"):
        classification_report(torch.zeros(4), torch.zeros(4, dtype=torch.long), ["a"])


@pytest.mark.parametrize("k", (3, 8))
def test_format_report_shows_every_class_and_percentages(k: int) -> None:
    logits, targets = _problem(0, k, n=40)
    names = [f"name{i}" for i in range(k)]
    report = classification_report(logits, targets, names)
    text = format_report(report)
    lines = text.splitlines()
    for name, row in zip(names, report["per_class"], strict=True):
        line = next(line for line in lines if line.startswith(name + " "))
        assert f"{row['f1']:.4f}" in line and line.rstrip().endswith(str(row["support"]))
    assert f"top-1 {100 * report['top1']:.2f}%" in text
    assert f"macro-F1 {100 * report['macro_f1']:.2f}%" in text
    assert ("top-5 n/a" in text) == (k <= 5)
    if k > 5:
        assert f"top-5 {100 * report['top5']:.2f}%" in text
