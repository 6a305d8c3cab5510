"""Calibrated probabilities and abstaining: the pure functions against known answers and scikit-learn, then
the temperature fitted in training travelling through predict, val, the CLI and an ONNX export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import pigeon
from pigeon import calibration as cal
from pigeon.cli import main
from pigeon.data import load_dataset
from pigeon.errors import ConfigError

# -- the pure functions ------------------------------------------------------------------------------------------


def _labels_drawn_from(logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return torch.multinomial(logits.softmax(1), 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    base = torch.randn(5000, 10, generator=torch.Generator().manual_seed(0)) * 2
    targets = _labels_drawn_from(base)  # base's softmax is calibrated for these labels by construction
    for true_t in (0.5, 1.0, 3.0):
        fitted = cal.fit_temperature(base * true_t, targets)  # scaled logits need T = true_t to undo it
        assert fitted == pytest.approx(true_t, rel=0.1)


def test_the_fitted_temperature_minimises_nll() -> None:
    logits = torch.randn(2000, 5, generator=torch.Generator().manual_seed(1)) * 4
    targets = _labels_drawn_from(logits / 2.5, seed=1)
    t = cal.fit_temperature(logits, targets)
    best = cal.nll(logits, targets, t)
    for other in (t * 0.9, t * 1.1, 1.0, cal.T_RANGE[0], cal.T_RANGE[1]):
        assert best <= cal.nll(logits, targets, other) + 1e-12
    with pytest.raises(ValueError, match="zero samples"):
        cal.fit_temperature(torch.empty(0, 3), torch.empty(0, dtype=torch.long))


def test_ece_and_reliability_by_hand() -> None:
    # Four images: two at confidence 0.9 (one right), two at 0.6 (both right), with 10 bins.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 1, 0])
    bins = cal.reliability(probs, targets, bins=10)
    assert sum(b["count"] for b in bins) == 4
    (low,) = [b for b in bins if b["lo"] == pytest.approx(0.5)]
    (high,) = [b for b in bins if b["lo"] == pytest.approx(0.8)]
    assert (low["count"], low["accuracy"], low["confidence"]) == (2, 1.0, pytest.approx(0.6))
    assert (high["count"], high["accuracy"], high["confidence"]) == (2, 0.5, pytest.approx(0.9))
    # ECE = 2/4 * |1.0 - 0.6| + 2/4 * |0.5 - 0.9| = 0.4
    assert cal.ece(probs, targets, bins=10) == pytest.approx(0.4)


def test_risk_coverage_and_threshold_table() -> None:
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 1, 0, 0], dtype=bool)
    curve = cal.risk_coverage(conf, correct, points=11)
    assert curve[-1] == {"coverage": 1.0, "accuracy": 0.6, "threshold": 0.2}
    assert {"coverage": 0.4, "accuracy": 1.0, "threshold": 0.8} in curve
    table = {r["target_coverage"]: r for r in cal.threshold_table(conf, correct, coverages=(1.0, 0.5, 0.45))}
    assert table[1.0]["min_conf"] == 0.2 and table[1.0]["accuracy"] == 0.6
    assert table[0.5] == {"target_coverage": 0.5, "min_conf": 0.7, "coverage": 0.5, "accuracy": 0.8}
    assert table[0.45]["coverage"] >= 0.45 and table[0.45]["min_conf"] == 0.7  # rounded up to whole images
    summary = cal.abstain_summary(conf, correct, 0.75)
    assert summary == {"min_conf": 0.75, "answered": 4, "abstained": 6, "coverage": 0.4, "accuracy_answered": 1.0}
    assert cal.abstain_summary(conf, correct, 1.0)["accuracy_answered"] is None


def test_auroc_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding makes many ties
    neg = np.round(rng.normal(0.0, 1.0, 500), 1)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(500)], np.r_[pos, neg])
    assert cal.auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert cal.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert cal.auroc(np.array([1.0]), np.array([1.0])) == 0.5
    with pytest.raises(ValueError, match="each kind"):
        cal.auroc(np.array([]), neg)


def test_temperature_of_a_checkpoint_and_of_an_export() -> None:
    assert cal.temperature_of({}) == 1.0
    assert cal.temperature_of({"calibration": None}) == 1.0
    assert cal.temperature_of({"calibration": {"temperature": 0.8}}) == 0.8
    assert cal.temperature_of({"calibration": {"temperature": 0.8, "applied_in_graph": True}}) == 1.0


def test_why_not_calibrate() -> None:
    logits = torch.eye(3).repeat(20, 1) * 5
    targets = torch.arange(3).repeat(20)
    assert "no mistake" in cal.why_not_calibrate(logits, targets)
    assert "fewer than" in cal.why_not_calibrate(logits[:10], (targets[:10] + 1) % 3)
    assert cal.why_not_calibrate(logits, (targets + torch.arange(60) // 59) % 3) is None


# -- through training, predict, val, the CLI and an export -------------------------------------------------------


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    split = load_dataset("digits", cache_dir=str(tmp_path_factory.mktemp("cache")), verbose=False).splits["test"]
    return np.asarray(split.images), np.asarray(split.labels)


def test_training_fits_the_temperature_on_val_and_reports_both(digits_run: Path, clf: pigeon.Classifier) -> None:
    fitted = clf.meta["calibration"]
    assert fitted["fitted_on"] == "val" and fitted["images"] > 0
    assert clf.temperature == fitted["temperature"] != 1.0
    summary = json.loads((digits_run / "summary.json").read_text())
    val = summary["val_report"]["calibration"]
    assert val["temperature"] == fitted["temperature"]
    assert val["nll"] <= val["nll_uncalibrated"]  # fitted on this very split: can only improve it
    test = summary["test_report"]["calibration"]
    assert test["temperature"] == fitted["temperature"] and 0 <= test["ece"] <= 1
    assert [r["target_coverage"] for r in test["thresholds"]] == list(cal.COVERAGES)
    assert test["risk_coverage"][-1]["coverage"] == 1.0
    assert test["risk_coverage"][-1]["accuracy"] == pytest.approx(summary["test_report"]["top1"])
    assert (digits_run / "calibration.png").stat().st_size > 10_000


def test_min_conf_abstains_exactly_below_the_threshold(clf: pigeon.Classifier,
                                                       test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = test_split
    plain = clf.predict(images)
    conf = np.sort([p.top1_conf for p in plain])
    threshold = float((conf[len(conf) // 2 - 1] + conf[len(conf) // 2]) / 2)  # between two images: no tie
    preds = clf.predict(images, min_conf=threshold)
    abstained = [p for p in preds if p.abstained]
    assert len(abstained) == len(conf) // 2
    assert all(p.label == cal.UNKNOWN and p.top1_conf < threshold for p in abstained)
    assert all(p.label == clf.classes[p.top1] for p in preds if not p.abstained)
    assert abstained[0].to_dict()["abstained"] is True and abstained[0].to_dict()["top_k"]
    assert "abstained" not in plain[0].to_dict()  # no threshold, no abstention fields
    # the answered half is more accurate than the whole: confidence ranks the mistakes last
    answered = [p.top1 == y for p, y in zip(preds, labels) if not p.abstained]
    assert np.mean(answered) > np.mean([p.top1 == y for p, y in zip(plain, labels)])
    with pytest.raises(ConfigError, match="min_conf"):
        pigeon.predict(clf, images[:1], min_conf=1.5)


def test_val_with_min_conf_counts_what_predict_answers(digits_run: Path, clf: pigeon.Classifier,
                                                       test_split: tuple[np.ndarray, np.ndarray],
                                                       tmp_path: Path) -> None:
    images, _ = test_split
    conf = np.sort([p.top1_conf for p in clf.predict(images)])
    threshold = float((conf[99] + conf[100]) / 2)
    report = pigeon.val(clf, "digits", split="test", min_conf=threshold, project=str(tmp_path), verbose=False)
    abstain = report["calibration"]["abstain"]
    assert (abstain["abstained"], abstain["answered"]) == (100, len(images) - 100)
    assert (Path(report["run_dir"]) / "calibration.png").is_file()
    with pytest.raises(ConfigError, match="min_conf"):
        pigeon.val(clf, "digits", min_conf=-0.1, project=None, verbose=False)


def test_cli_predict_says_unknown_below_min_conf(digits_run: Path, clf: pigeon.Classifier, tmp_path: Path,
                                                 test_split: tuple[np.ndarray, np.ndarray],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    images, _ = test_split
    confs = [p.top1_conf for p in clf.predict(images[:40])]
    sure, unsure = int(np.argmax(confs)), int(np.argmin(confs))
    for name, i in (("sure", sure), ("unsure", unsure)):
        Image.fromarray(images[i, 0], "L").save(tmp_path / f"{name}.png")
    threshold = (confs[sure] + confs[unsure]) / 2
    out_json = tmp_path / "p.json"
    assert main(["predict", "--model", str(digits_run / "weights" / "best.safetensors"), "--source",
                 str(tmp_path / "sure.png"), str(tmp_path / "unsure.png"), "--min-conf", f"{threshold:.6f}",
                 "--device", "cpu", "--save-json", str(out_json)]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines[str(tmp_path / "unsure.png")].startswith("unknown (")
    assert not lines[str(tmp_path / "sure.png")].startswith("unknown")
    saved = {Path(d["source"]).stem: d for d in json.loads(out_json.read_text())}
    assert saved["unsure"]["abstained"] and saved["unsure"]["label"] == "unknown"
    assert not saved["sure"]["abstained"]


def test_the_onnx_export_carries_the_temperature(digits_exports: dict[str, Any], clf: pigeon.Classifier,
                                                 test_split: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = test_split
    result = digits_exports["onnx"]  # the session's ONNX export of digits_run's calibrated checkpoint
    assert result.contract["output"]["temperature"] == clf.temperature
    assert result.contract["calibration"]["applied_in_graph"] is True
    onnx = pigeon.load(result.path)
    assert onnx.temperature == 1.0  # the graph divides: nothing left to apply
    np.testing.assert_allclose(np.stack([p.probs for p in onnx.predict(images[:64])]),
                               np.stack([p.probs for p in clf.predict(images[:64])]), atol=1e-4)
    # A runtime with no pigeon code gets calibrated probabilities from the softmax of the graph's logits.
    import onnxruntime as ort

    x = ((images[:8].astype(np.float32) / 255 - np.array(clf.preprocess.mean, np.float32).reshape(1, -1, 1, 1))
         / np.array(clf.preprocess.std, np.float32).reshape(1, -1, 1, 1))
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    raw = np.concatenate([session.run(None, {"images": x[i:i + 1]})[0] for i in range(8)])
    np.testing.assert_allclose(torch.from_numpy(raw).softmax(1).numpy(), clf.probabilities(images[:8]), atol=1e-4)
    # val of the export reports the same calibration as val of its checkpoint
    a = pigeon.val(onnx, "digits", split="test", project=None, verbose=False)["calibration"]
    b = pigeon.val(clf, "digits", split="test", project=None, verbose=False)["calibration"]
    assert a["temperature"] == b["temperature"]
    for key in ("ece", "ece_uncalibrated", "nll", "nll_uncalibrated"):
        assert a[key] == pytest.approx(b[key], abs=1e-4)


def test_no_calibrate_and_a_too_small_val_split_keep_the_plain_softmax(tiny_clf: pigeon.Classifier,
                                                                      tmp_path: Path, digits_folder: Any,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # tiny_clf trained on a folder of 18 images with default options: its val split is far too small
    assert tiny_clf.meta.get("calibration") is None and tiny_clf.temperature == 1.0
    data = digits_folder(splits=("train", "val"), per_class={"train": 10, "val": 20}, size=8)
    run = pigeon.train(str(data), epochs=1, calibrate=False, plots=False, device="cpu", amp="off",
                       project=str(tmp_path), name="raw")
    assert "calibrated: temperature" not in capsys.readouterr().out
    raw = pigeon.load(run.best, device="cpu")
    assert raw.meta.get("calibration") is None and raw.temperature == 1.0
    assert raw.predict(np.zeros((8, 8), np.uint8)).probs.sum() == pytest.approx(1.0, abs=1e-5)
