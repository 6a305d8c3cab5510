"""Multi-label end to end, as a user runs it: a labels CSV of real images (digit mosaics) -> train with the
defaults -> thresholds fitted on val -> predict, val, CLI and an ONNX export that all give the same label sets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mosaics import write_mosaics

import pigeon
from pigeon.errors import ConfigError


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("multilabel")
    labels = write_mosaics(base / "mosaics", {"train": 500, "val": 150, "test": 150})
    # Batch 32, so that 500 images make enough steps; everything else is the default.
    result = pigeon.train(data=str(labels), batch=32, project=str(base / "runs"), cache_dir=str(base / "cache"),
                          verbose=False)
    return result, labels, base


def test_training_learns_and_reports_multi_label_figures(run: Any) -> None:
    result, labels, _ = run
    assert result.config.task == "multilabel" and result.config.select == "map"
    test = result.test
    prevalence = float(np.mean([r["support"] for r in test["per_class"]])) / test["n"]
    # Scores that ignore the image get an AP near each class's prevalence (about 0.2 here).
    assert test["map"] > max(0.6, prevalence + 0.3), test["map"]
    assert 0 < test["exact_match"] <= test["hamming_accuracy"] <= 1
    assert {"map", "micro_f1", "exact_match", "hamming_accuracy"} <= set(json.loads(
        (result.run_dir / "summary.json").read_text())["test"])
    header = (result.run_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert {"val_map", "val_micro_f1", "val_loss"} <= set(header) and "val_top1" not in header
    assert (result.run_dir / "curves.png").is_file()


def test_thresholds_are_fitted_on_val_and_travel_in_the_checkpoint(run: Any) -> None:
    from pigeon.data import load_dataset
    from pigeon.engine.evaluate import logits_for
    from pigeon.metrics import best_f1_thresholds

    result, labels, base = run
    clf = pigeon.load(result.best, device="cpu")
    saved = clf.meta["thresholds"]
    assert clf.meta["task"] == "multilabel" and saved["fitted_on"] == "val" and saved["images"] == 150
    val = load_dataset(str(labels), cache_dir=str(base / "cache"), verbose=False).splits["val"]
    logits = logits_for(clf.model, val.images, clf.preprocess, clf.device)
    refit = best_f1_thresholds(torch.sigmoid(logits).numpy(), val.labels)
    assert saved["values"] == pytest.approx(refit.tolist(), abs=1e-5)
    assert len(set(saved["values"])) > 1  # per class, not one number


def test_predict_returns_every_class_above_its_threshold(run: Any) -> None:
    result, labels, _ = run
    clf = pigeon.load(result.best, device="cpu")
    files = sorted((labels.parent / "img").glob("test_*.png"))[:20]
    preds = clf.predict([str(f) for f in files])
    thresholds = np.asarray(clf.meta["thresholds"]["values"])
    for p in preds:
        above = [clf.classes[k] for k in np.argsort(-p.probs, kind="stable") if p.probs[k] >= thresholds[k]]
        assert p.labels == above and p.label == ";".join(above)
        assert np.all((p.probs >= 0) & (p.probs <= 1)) and not np.isclose(p.probs.sum(), 1.0)  # not a softmax
        d = p.to_dict()
        assert d["labels"] == above and [s["label"] for s in d["scores"]] == above
    truth = {line.split(",")[0]: line.split(",")[1] for line in labels.read_text().splitlines()[1:]}
    right = sum(p.label == truth[f"img/{Path(p.source).name}"] for p in preds)
    assert right >= 3  # whole label sets right, far above what guessing gets (about 1 in 10^3)
    with pytest.raises(ConfigError, match="min_conf is for single-label models"):
        clf.predict(str(files[0]), min_conf=0.5)


def test_val_reproduces_the_training_test_report(run: Any) -> None:
    result, labels, base = run
    report = pigeon.val(result.best, str(labels), split="test", cache_dir=str(base / "cache"), project=None,
                        verbose=False)
    for key in ("map", "micro_f1", "exact_match", "hamming_accuracy"):
        assert report[key] == pytest.approx(result.test[key], abs=1e-6), key


def test_the_onnx_export_says_sigmoid_carries_the_thresholds_and_predicts_the_same(run: Any) -> None:
    result, labels, base = run
    exported = pigeon.export(result.best, out=str(base / "ml.onnx"), cache_dir=str(base / "cache"), verbose=False)
    contract = exported.contract
    assert contract["task"] == "multilabel" and "sigmoid" in contract["output"]["probabilities"]
    assert contract["output"]["thresholds"] == pytest.approx(
        pigeon.load(result.best).meta["thresholds"]["values"])
    assert contract["parity"]["label_set_agreement"] >= 0.995
    files = [str(f) for f in sorted((labels.parent / "img").glob("test_*.png"))[:30]]
    ours = pigeon.load(result.best, device="cpu").predict(files)
    theirs = pigeon.load(exported.path).predict(files)
    assert [p.labels for p in theirs] == [p.labels for p in ours]


def test_the_cli_trains_from_a_csv_and_prints_label_sets(run: Any) -> None:
    result, labels, _ = run
    out = subprocess.run([sys.executable, "-m", "pigeon", "predict", "--model", str(result.best), "--source",
                          str(labels.parent / "img" / "test_0000.png"), "--top-k", "2"],
                         capture_output=True, text=True, check=True).stdout
    expected = pigeon.load(result.best, device="cpu").predict(str(labels.parent / "img" / "test_0000.png"))
    assert out.startswith(f"{labels.parent / 'img' / 'test_0000.png'}: {expected.label or '(no class'}")


def test_options_that_mean_nothing_for_multi_label_are_refused(run: Any, tmp_path: Path) -> None:
    _, labels, base = run
    with pytest.raises(ConfigError, match="balance=sampler .* use --balance weights"):
        pigeon.train(data=str(labels), balance="sampler", epochs=1, project=str(tmp_path), verbose=False,
                     cache_dir=str(base / "cache"))
    with pytest.raises(ConfigError, match="select=map .* is for multi-label runs"):
        pigeon.train(data="digits", select="map", epochs=1, project=str(tmp_path), verbose=False)


def test_balance_weights_weigh_each_class_positives_by_their_rarity() -> None:
    from pigeon.engine.balance import positive_weights

    weights = positive_weights(np.array([50, 10, 1, 0]), images=100)
    assert weights.tolist() == pytest.approx([1.0, 9.0, 99.0, 99.0])
    assert positive_weights(np.array([1]), images=10_000).item() == 100.0  # capped


def test_tune_scores_a_multi_label_study_on_val_map(run: Any, tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="the tune extra is not installed: pip install 'pigeon[tune]'")
    _, labels, base = run
    result = pigeon.tune(str(labels), trials=1, epochs=1, batch=32, final=False, project=str(tmp_path),
                         cache_dir=str(base / "cache"), verbose=False)
    trial = json.loads((result.dir / "trials" / "trial-000" / "summary.json").read_text())
    assert result.best_value == pytest.approx(trial["val"]["map"])
    assert result.dir.name == labels.parent.name  # the CSV's folder names the study, as it names a run


def test_an_interrupted_multi_label_run_with_mixup_resumes_exactly(run: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pigeon.engine import checkpoint
    from pigeon.engine import train as train_mod

    _, labels, base = run
    options = {"epochs": 3, "batch": 64, "mixup": 0.4, "verbose": False, "plots": False,
               "cache_dir": str(base / "cache")}
    whole = pigeon.train(data=str(labels), project=str(tmp_path), name="whole", **options)
    real_step, calls = train_mod.train_step, [0]

    def step(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        y, multilabel = args[2], args[10]  # train_step's targets and its multilabel flag
        assert multilabel is True and y.ndim == 2 and y.dtype == torch.float32  # multi-hot rows, mixed
        if calls[0] == 500 // 64 + 3:  # inside epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        pigeon.train(data=str(labels), project=str(tmp_path), name="cut", **options)
    monkeypatch.setattr(train_mod, "train_step", real_step)
    resumed = pigeon.train(resume=str(tmp_path / "cut"), verbose=False)
    a, meta_a = checkpoint.read(whole.best)
    b, meta_b = checkpoint.read(resumed.best)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta_a["thresholds"] == meta_b["thresholds"] and resumed.test["map"] == whole.test["map"]
