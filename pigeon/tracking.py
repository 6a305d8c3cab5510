"""Experiment tracking: a training run's events sent to TensorBoard (`--tensorboard`) and MLflow (`--mlflow`).

Both libraries are optional extras, imported only when asked for. Both consume the engine's one events hook
("start", "progress", "epoch", "done"), so tracking never changes what a run computes.

TensorBoard: event files in <run>/tb/ (scalars per epoch, the running loss and images/s every few steps, the
confusion matrix and the validation prediction grid as images, the configuration as text).
MLflow: a run in the experiment "pigeon" (or $MLFLOW_EXPERIMENT_NAME) of $MLFLOW_TRACKING_URI, else of a
local file store ./mlruns (see tracking_uri): the resolved options as params, each epoch's figures as metrics,
the run folder's reports, plots and best weights as artefacts. MLflow's own usage telemetry is switched off
for the process (MLFLOW_DISABLE_TELEMETRY=true, unless the variable is already set) before MLflow is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pigeon.config import TrainConfig
from pigeon.errors import ConfigError

Events = Callable[[dict[str, Any]], None]
SPLITS = ("val", "test")


def _png_array(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _report_images(run_dir: Path) -> dict[str, np.ndarray]:
    """The confusion matrix of the selected model and the prediction grid, as HWC uint8 arrays."""
    from pigeon import plots

    images: dict[str, np.ndarray] = {}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        report = summary.get("val_report") or summary.get("test_report")
        meta_path = run_dir / "weights" / "best.meta.json"
        if report and meta_path.is_file():
            classes = json.loads(meta_path.read_text())["classes"]
            with tempfile.TemporaryDirectory() as tmp:
                png = plots.plot_confusion(np.asarray(report["confusion"]), classes, Path(tmp) / "cm.png")
                images["confusion_matrix"] = _png_array(png)
    for split in SPLITS:
        grid = run_dir / f"{split}_predictions.png"
        if grid.is_file():
            images["predictions"] = _png_array(grid)
            break
    return images


class TensorBoardLog:
    """Writes a run's events to <run>/tb/ with torch.utils.tensorboard."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'pigeon[tensorboard]'") \
                from None
        self._writer_cls = SummaryWriter
        self.writer: Any = None
        self.steps = 1
        self.images = 0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            run_dir = Path(event["run_dir"])
            self.writer = self._writer_cls(log_dir=str(run_dir / "tb"))
            self.steps, self.images = int(event["steps"]), int(event["steps"]) * int(event["batch"])
            config = (run_dir / "config.json").read_text()
            self.writer.add_text("config", "```\n" + config + "\n```", global_step=int(event["epoch"]))
        elif kind == "progress":
            step = (int(event["epoch"]) - 1) * self.steps + int(event["step"])
            self.writer.add_scalar("train/loss_running", event["loss"], step)
            self.writer.add_scalar("train/images_per_s", event["images_per_s"], step)
        elif kind == "epoch":
            epoch = int(event["epoch"])
            self.writer.add_scalar("train/loss", event["train_loss"], epoch)
            self.writer.add_scalar("lr", event["lr"], epoch)
            if event.get("train_seconds"):
                self.writer.add_scalar("train/epoch_images_per_s", self.images / event["train_seconds"], epoch)
            for split in SPLITS:
                for metric in ("loss", "top1", "top5", "macro_f1", "map", "micro_f1"):
                    value = event.get(f"{split}_{metric}")
                    if value is not None:
                        self.writer.add_scalar(f"{split}/{metric}", value, epoch)
        elif kind == "done":
            run_dir = Path(event["run_dir"])
            for name, image in _report_images(run_dir).items():
                self.writer.add_image(name, image, int(event["best_epoch"]), dataformats="HWC")
            for split in SPLITS:
                for metric, value in (event.get(split) or {}).items():
                    if metric != "n" and isinstance(value, (int, float)):  # not the worst class's record
                        self.writer.add_scalar(f"final/{split}_{metric}", value, int(event["best_epoch"]))
            self.writer.flush()

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


def _import_mlflow() -> Any:
    # Least intrusive off switch: only this process, only once MLflow is used, and a user's own setting wins.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
    except ImportError:
        raise ConfigError("--mlflow needs the mlflow package: pip install 'pigeon[mlflow]'") from None
    return mlflow


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, or a file store in ./mlruns (MLflow's own default would be a SQLite file).

    MLflow 3 keeps its file store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE=true; that
    is set (if unset) only for this default, so a tracking URI of the user's own is never touched.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path("mlruns").absolute().as_uri()


class MLflowLog:
    """Logs a run's params, per-epoch metrics and artefacts to MLflow through an explicit client (no global
    active run, so several trainings in one process never mix)."""

    ARTEFACTS = ("config.json", "results.csv", "summary.json", "curves.png", "confusion_matrix.png",
                 "val_predictions.png", "test_predictions.png", "weights/best.safetensors",
                 "weights/best.meta.json")

    def __init__(self) -> None:
        mlflow = _import_mlflow()
        self._entities = mlflow.entities
        self.client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri())
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.run_dir = Path(event["run_dir"])
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pigeon")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                         tags={"pigeon.run_dir": str(self.run_dir.absolute())})
            self.run_id = run.info.run_id
            config = json.loads((self.run_dir / "config.json").read_text())
            params = [self._entities.Param(k, str(v)[:500]) for k, v in sorted(config.items())]
            self.client.log_batch(self.run_id, params=params)
        elif kind == "epoch":
            metrics = {k: v for k, v in event.items() if k not in ("event", "epoch", "epochs")
                       and isinstance(v, (int, float)) and v is not None}
            self._metrics(metrics, int(event["epoch"]))
        elif kind == "done":
            final = {f"final_{split}_{k}": v for split in SPLITS for k, v in (event.get(split) or {}).items()
                     if k != "n" and isinstance(v, (int, float))}
            self._metrics({**final, "best_epoch": event["best_epoch"], "seconds": event["seconds"]},
                          int(event["epochs_run"]))
            assert self.run_dir is not None and self.run_id is not None
            for rel in self.ARTEFACTS:
                path = self.run_dir / rel
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(rel).parent)
                                             if "/" in rel else None)

    def _metrics(self, values: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        metrics = [self._entities.Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def open_trackers(cfg: TrainConfig, events: Events | None = None) -> Iterator[Events | None]:
    """The events callable for the trackers `cfg` asks for (plus `events`, if given), or None when none.

    The libraries are imported here, before any data is read, so a missing extra fails at once. On the way
    out each tracker is closed; an MLflow run is marked FINISHED, FAILED or KILLED (interrupted).
    """
    trackers: list[Any] = []
    if cfg.tensorboard:
        trackers.append(TensorBoardLog())
    if cfg.mlflow:
        trackers.append(MLflowLog())
    if not trackers:
        yield events
        return
    sinks = [*trackers, *([events] if events else [])]

    def emit(event: dict[str, Any]) -> None:
        for sink in sinks:
            sink(event)

    status = "FINISHED"
    try:
        yield emit
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        for tracker in trackers:
            tracker.close(status)
