"""--balance: turned on by default only for imbalanced data, said in the log, and balanced accuracy and the worst
class in every report; checked on a real imbalanced folder of scikit-learn digits (10:1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pigeon
from pigeon.engine import balance
from pigeon.metrics import classification_report, format_report


@pytest.fixture
def imbalanced_digits(tmp_path: Path, digits_arrays: tuple[np.ndarray, np.ndarray]) -> Path:
    """train/: digits 0-4 with 100 images each, 5-9 with 10 each; test/: 20 of each, none used in train."""
    from PIL import Image

    images, labels = digits_arrays
    root = tmp_path / "imbalanced"
    for digit in range(10):
        samples = np.flatnonzero(labels == digit)
        n_train = 100 if digit < 5 else 10
        for split, chosen in (("train", samples[:n_train]), ("test", samples[100:120])):
            folder = root / split / str(digit)
            folder.mkdir(parents=True)
            for k, i in enumerate(chosen):
                Image.fromarray(images[i], "L").save(folder / f"{k:03d}.png")
    return root


def test_balanced_accuracy_and_the_worst_class() -> None:
    # class 0: 3 of 4 right; class 1: 1 of 2 right; class 2: absent from the targets
    logits = torch.tensor([[5.0, 0, 0], [5, 0, 0], [5, 0, 0], [0, 5, 0], [0, 5, 0], [5, 0, 0]])
    targets = torch.tensor([0, 0, 0, 0, 1, 1])
    report = classification_report(logits, targets, ["a", "b", "c"])
    assert report["top1"] == pytest.approx(4 / 6)
    assert report["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # c has no recall to average
    assert report["worst_class"] == {"class": "b", "recall": 0.5, "support": 2}
    assert "balanced accuracy 62.50%   worst class b (recall 50.00% of 2)" in format_report(report)


@pytest.mark.parametrize(("counts", "mode"), [([100, 10, 50], "sampler"), ([100, 40, 50], "none"),
                                              ([100, 0, 30], "sampler"), ([5, 5], "none")])
def test_auto_turns_on_at_three_to_one(counts: list[int], mode: str) -> None:
    assert balance.resolve("auto", np.array(counts)) == mode
    assert balance.resolve("sampler", np.array([5, 5])) == "sampler"  # what the user sets stays


def test_loss_weights_give_every_class_the_same_total_weight() -> None:
    counts = np.array([90, 10, 0])
    w = balance.loss_weights(counts)
    assert w[0] * 90 == pytest.approx(w[1] * 10) and w[2] == 0
    labels = torch.tensor([0] * 90 + [1] * 10)
    assert w[labels].mean() == pytest.approx(1.0)  # the loss keeps its scale


def test_the_sampler_draws_each_class_equally_often() -> None:
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    counts = balance.class_counts(labels.numpy(), 3)
    order = balance.balanced_order(labels, counts, torch.Generator().manual_seed(0))
    assert len(order) == 1000
    drawn = np.bincount(labels[order].numpy(), minlength=3) / 1000
    assert np.all(np.abs(drawn - 1 / 3) < 0.06), drawn


def test_a_default_run_on_imbalanced_data_resamples_and_says_so(
        imbalanced_digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = pigeon.train(str(imbalanced_digits), epochs=2, device="cpu", plots=False, project=str(tmp_path / "r"),
                       val_fraction=0)
    out = capsys.readouterr().out
    assert "balance auto: sampler, because the largest class (0, 100 images) has 10.0x the smallest (5, 10)" in out
    assert "worst class" in out and "balanced accuracy" in out
    assert json.loads((run.run_dir / "config.json").read_text())["balance"] == "sampler"
    summary = json.loads((run.run_dir / "summary.json").read_text())
    test = summary["test_report"]
    assert test["balanced_accuracy"] == pytest.approx(np.mean([r["recall"] for r in test["per_class"]]))
    assert summary["test"]["worst_class"]["class"] == test["worst_class"]["class"]


def test_weights_train_and_balanced_data_is_left_alone(
        imbalanced_digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = pigeon.train(str(imbalanced_digits), epochs=1, balance="weights", device="cpu", plots=False,
                       project=str(tmp_path / "r"), val_fraction=0)
    assert "balance weights: the largest class" in capsys.readouterr().out
    assert run.config.balance == "weights" and run.test is not None
    plain = pigeon.train("digits", epochs=1, device="cpu", plots=False, project=str(tmp_path / "r"))
    assert plain.config.balance == "none" and "note: balance" not in capsys.readouterr().out


def test_a_wrong_mode_is_refused() -> None:
    with pytest.raises(pigeon.ConfigError, match="balance='weighted' is not valid; choose one of auto, none"):
        pigeon.train("digits", balance="weighted")
