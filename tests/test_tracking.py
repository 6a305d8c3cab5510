"""--tensorboard and --mlflow, read back from what the real libraries wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pigeon
from pigeon.cli import main

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory, digits_arrays: tuple[np.ndarray, np.ndarray]
                ) -> tuple[Path, Path]:
    """A 2-epoch run on a small folder of digit images (train/val/test) logged to both, with ./mlruns (the
    default store) in a temporary folder."""
    import os

    from PIL import Image

    work = tmp_path_factory.mktemp("tracked")
    images, labels = digits_arrays
    for s, split in enumerate(("train", "val", "test")):
        for digit in range(3):
            (work / "data" / split / str(digit)).mkdir(parents=True)
            for k, i in enumerate(np.flatnonzero(labels == digit)[s * 10:s * 10 + (10 if s == 0 else 4)]):
                Image.fromarray(images[i], "L").save(work / "data" / split / str(digit) / f"{k}.png")
    old, uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(work)
    try:
        assert main(["train", "--data", "data", "--epochs", "2", "--batch", "8", "--imgsz", "16", "--device",
                     "cpu", "--amp", "off", "--no-verbose", "--project", "runs", "--name", "t", "--tensorboard",
                     "--mlflow", "--cache-dir", str(work / "cache")]) == 0
    finally:
        os.chdir(old)
        if uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    return work / "runs" / "t", work / "mlruns"


def test_tensorboard_event_files_hold_the_scalars_and_images(tracked_run: tuple[Path, Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tracked_run
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "val/top5" not in tags["scalars"]  # 3 classes: no top-5, and nothing logged for it
    for tag in ("train/loss", "val/loss", "val/top1", "val/macro_f1", "lr", "train/images_per_s",
                "train/epoch_images_per_s", "final/test_top1"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("val/top1")] == [1, 2]
    rows = pigeon.runs(run_dir.parent)[0]["rows"]
    assert [round(e.value, 4) for e in acc.Scalars("val/top1")] == [round(r["val_top1"], 4) for r in rows]
    assert set(tags["images"]) == {"confusion_matrix", "predictions"}
    assert acc.Images("confusion_matrix")[0].width > 100


def test_mlflow_local_store_holds_params_metrics_and_artefacts(tracked_run: tuple[Path, Path]) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, store = tracked_run
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("pigeon")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert run.data.params["epochs"] == "2" and run.data.params["model"] == "pigeon-p"
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["final_test_top1"] == pytest.approx(pigeon.runs(run_dir.parent)[0]["test_top1"])
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.csv", "summary.json", "curves.png", "weights"} <= artefacts


def test_a_failed_run_is_marked_failed_in_mlflow(tracked_run: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    def boom(event: dict) -> None:
        if event["event"] == "epoch":
            raise RuntimeError("disk full")

    from pigeon.config import TrainConfig
    from pigeon.engine.train import train
    from pigeon.tracking import open_trackers

    data = tracked_run[0].parent.parent / "data"
    cfg = TrainConfig(data=str(data), epochs=1, batch=8, imgsz=16, device="cpu", verbose=False, plots=False,
                      mlflow=True, project=str(tmp_path / "runs"))
    with pytest.raises(RuntimeError, match="disk full"), open_trackers(cfg, boom) as events:
        train(cfg, events)
    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("pigeon").experiment_id])
    assert run.info.status == "FAILED"
