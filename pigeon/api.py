"""The verbs, as Python functions: train, val, predict, export, load. The CLI calls exactly these."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pigeon.config import AuditConfig, BenchConfig, ExportConfig, PredictConfig, TrainConfig, build
from pigeon.engine.predict import Classifier, Prediction
from pigeon.engine.train import TrainResult, make_run_dir
from pigeon.engine.train import train as _train
from pigeon.errors import CheckpointError, DatasetError

if TYPE_CHECKING:
    from pigeon.audits import AuditResult
    from pigeon.data.builtins import BuiltinInfo
    from pigeon.deploy import ExportResult
    from pigeon.engine.saliency import ExplainResult
    from pigeon.tuning import TuneResult


def train(data: str = "", config: str | os.PathLike[str] | None = None, **options: Any) -> TrainResult:
    """Train a classifier; see `TrainConfig` (or `pigeon train --help`) for every option.

    Args:
        data: a folder of class subfolders (optionally split into train/val/test) or a built-in
            dataset name: "fashion-mnist", "digits", "mnist", "cifar10", "cifar100" (see datasets()). Not needed
            with resume="runs/train/<name>".
        config: a YAML or JSON file of options (or a run's config.json, to reproduce it); keyword options
            override it.
        **options: model="pigeon-n", epochs=10, batch=128, imgsz=..., lr=..., device="auto", ...
            tensorboard=True / mlflow=True log the run (extras pigeon[tensorboard], pigeon[mlflow]).
    Returns:
        TrainResult with the run directory, the best/last weights and validation/test reports.
    """
    from pigeon import tracking

    if config is not None:
        from pigeon.configfile import read_config_file

        options = {**read_config_file(config), **options}
    if data:
        options["data"] = data
    cfg = build(TrainConfig, **options)
    with tracking.open_trackers(cfg) as events:
        return _train(cfg, events)


def load(path: str | os.PathLike[str], device: str = "auto") -> Classifier:
    """Load a checkpoint (.safetensors) or an export (.onnx, .torchscript, OpenVINO folder or .xml) as a
    Classifier ready to predict. Exports run on the CPU with the preprocessing their contract records."""
    from pigeon.engine import checkpoint

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".pkl", ".ckpt"):
        raise CheckpointError(f"{path}: pigeon loads its own .safetensors checkpoints; a {suffix} file can hold "
                              "pickled code and is never loaded here. Use runs/train/<name>/weights/best.safetensors")
    if suffix in (".onnx", ".torchscript", ".xml") or (path.is_dir() and any(path.glob("*.xml"))):
        from pigeon.deploy import load_runtime

        model, meta = load_runtime(path)
        return Classifier(model, meta, device="cpu")
    model, meta = checkpoint.load_model(path)
    return Classifier(model, meta, device=device)


def export(model: str | os.PathLike[str], format: str = "onnx", **options: Any) -> ExportResult:
    """Export a checkpoint and check it against PyTorch on real images; see `ExportConfig` for options.

    Returns an ExportResult with `path`, the embedded `contract` and its `parity` report.
    """
    from pigeon.deploy import export as _export

    return _export(build(ExportConfig, model=str(model), format=format, **options))


def bench(model: str | os.PathLike[str], **options: Any) -> list[dict[str, Any]]:
    """Measure a checkpoint across formats and input sizes; see `BenchConfig`. Returns one row per pair.

    With `project` set (default runs/bench) it also writes bench.json and bench.md into project/name.
    """
    from pigeon.deploy.bench import bench as _bench
    from pigeon.deploy.bench import table
    from pigeon.io import atomic_write_text, write_json

    cfg = build(BenchConfig, model=str(model), **options)
    rows = _bench(cfg)
    text = table(rows)
    if cfg.verbose:
        print(text)
    if cfg.project:
        run_dir = make_run_dir(cfg.project, cfg.name or Path(cfg.model).with_suffix("").name, False)
        write_json(run_dir / "bench.json", {"config": cfg.__dict__, "rows": rows})
        atomic_write_text(run_dir / "bench.md", text + "\n")
        if cfg.verbose:
            print(f"results written to {run_dir}")
    return rows


def audit(data: str, **options: Any) -> AuditResult:
    """Audit an image folder, read-only: counts, image statistics, unreadable files, exact and near duplicates
    (within and across splits), and label-error candidates from a cross-validated model; see `AuditConfig`.

    Args:
        data: a folder laid out as root/<class>/... or root/{train,val,test}/<class>/...
        **options: out="runs/audit/<name>", near_threshold=0.06, label_check=True, folds=5, epochs=10, ...
    Returns:
        AuditResult with `dir` (report.json, report.md, thumbs/) and `report`, the content of report.json.
    """
    from pigeon.audits import run

    return run(build(AuditConfig, data=data, **options))


def _classifier(model: str | os.PathLike[str] | Classifier, device: str) -> Classifier:
    return model if isinstance(model, Classifier) else load(model, device=device)


def predict(model: str | os.PathLike[str] | Classifier, source: Any, top_k: int = 5, batch: int = 64,
            device: str = "auto", min_conf: float | None = None) -> Prediction | list[Prediction]:
    """Predict with a checkpoint (or a loaded Classifier) on files, folders, globs, images or arrays.

    With `min_conf` (0-1), an image whose calibrated top-1 confidence is below it gets the label "unknown"
    (`Prediction.abstained`); `pigeon val` prints the accuracy and coverage each threshold gives.
    """
    cfg = build(PredictConfig, top_k=top_k, batch=batch, device=device, min_conf=min_conf)
    return _classifier(model, cfg.device).predict(source, top_k=cfg.top_k, batch=cfg.batch, min_conf=cfg.min_conf)


def val(model: str | os.PathLike[str] | Classifier, data: str, split: str | None = None, batch: int = 256,
        device: str = "auto", cache_dir: str | None = None, project: str | None = "runs/val",
        name: str | None = None, plots: bool = True, verbose: bool = True,
        min_conf: float | None = None) -> dict[str, Any]:
    """Measure a model on a dataset split (default: val, else test, else the whole folder).

    Returns the report: top1, top5, macro_f1, loss, per_class, confusion, and `calibration` (ECE and NLL at
    the model's temperature and without it, reliability bins, the risk-coverage curve, a threshold table and,
    with `min_conf`, how many images that threshold answers and how accurately). With `project` set it also
    writes report.json, confusion_matrix.png and calibration.png into project/name.
    """
    from pigeon.data import load_dataset
    from pigeon.data.dataset import to_model_labels
    from pigeon.engine.evaluate import logits_for, report_for
    from pigeon.io import write_json
    from pigeon.metrics import format_report

    clf = _classifier(model, device)
    spec = clf.preprocess
    # The cache is keyed by what the preprocessing resolves to, so training's entry is reused as it is.
    multilabel = clf.thresholds is not None
    ds = load_dataset(data, imgsz=spec.imgsz, channels=spec.channels, resize=spec.resize, cache_dir=cache_dir,
                      verbose=verbose, task="multilabel" if multilabel else "auto")
    if (ds.task == "multilabel") != multilabel:
        raise DatasetError(f"{data} is {'multi' if ds.task == 'multilabel' else 'single'}-label data, but the model is "
                           f"{'multi' if multilabel else 'single'}-label; validate it on data of its own kind")
    if split is None:
        split = next(s for s in ("val", "test", "train") if s in ds.splits)
    if split not in ds.splits:
        raise DatasetError(f"{data} has no {split!r} split; it has {', '.join(ds.splits)}")
    unknown = sorted(set(ds.classes) - set(clf.classes))
    if unknown:
        raise DatasetError(f"{data}: classes {unknown} are not among the model's classes "
                           f"{list(clf.classes)}; validate on data with the classes the model was trained on")
    part = ds.splits[split]
    clf.check_min_conf(min_conf)  # the same checks, and messages, as predict's
    logits = logits_for(clf.model, part.images, spec, clf.device, batch=batch, amp=clf.amp,
                        channels_last=clf.channels_last)
    # An export's graph divides by the temperature already: undo it, so the report shows the same before and
    # after figures as for the checkpoint it came from.
    logits = logits * (clf.fitted_temperature / clf.temperature)
    # The dataset's labels in the model's class order, matched by name: folder order need not match.
    labels = to_model_labels(np.asarray(part.labels), ds.classes, list(clf.classes))
    if multilabel:
        report = report_for(logits, labels, list(clf.classes), thresholds=list(clf.thresholds))
    else:
        report = report_for(logits, labels, list(clf.classes), clf.fitted_temperature, min_conf)
    report["split"] = split
    report["data"] = str(data)
    if verbose:
        print(format_report(report))
    if project:
        where = Path(str(data))
        default_name = f"{clf.meta.get('model', 'model')}-{where.stem if where.is_file() else where.name}"
        run_dir = make_run_dir(project, name or default_name, False)
        write_json(run_dir / "report.json", report)
        if plots and not multilabel:
            from pigeon.plots import plot_calibration, plot_confusion

            plot_confusion(np.asarray(report["confusion"]), list(clf.classes), run_dir / "confusion_matrix.png")
            plot_calibration(report["calibration"], run_dir / "calibration.png", split)
        report["run_dir"] = str(run_dir)
        if verbose:
            print(f"report written to {run_dir}")
    return report


def explain(model: str | os.PathLike[str] | Classifier, source: Any, method: str = "gradcam",
            target: str | int | None = None, layer: str | None = None, out: str | os.PathLike[str] | None = None,
            **options: Any) -> ExplainResult:
    """Grad-CAM (or Grad-CAM++) heat maps of the regions behind each image's predicted (or `target`) class.

    Args:
        model: a checkpoint (runs/train/<name>/weights/best.safetensors) or a loaded Classifier.
        source: image files, folders, globs, PIL images or arrays, as for predict().
        method: "gradcam" or "gradcam++".
        target: a class name or index to explain instead of the prediction.
        layer: the module to explain (default: the model's last convolutional stage).
        out: folder for the overlay PNGs, .npy maps and explain.json (default runs/explain/<run name>).
        **options: batch=32, device="auto", save=True, verbose=True.
    Returns:
        ExplainResult: dir, method, layer, maps (float32 [N, H, W] in [0, 1]) and one item per image.
    """
    from pigeon.engine.saliency import explain as _explain

    clf = _classifier(model, options.pop("device", "auto"))
    origin = "model" if isinstance(model, Classifier) else str(model)
    return _explain(clf, source, method=method, target=target, layer=layer, out=out, origin=origin, **options)


def datasets(cache_dir: str | os.PathLike[str] | None = None) -> list[BuiltinInfo]:
    """The built-in datasets: splits, classes, image size, download size and where each is found on this
    machine (or the address it would be downloaded from). Reads folder listings only; downloads nothing."""
    from pigeon.data.builtins import describe

    return describe(None if cache_dir is None else str(cache_dir))


def runs(project: str | os.PathLike[str] = "runs/train", sort: str | None = None) -> list[dict[str, Any]]:
    """The run folders under `project`: one dict per run with its key options, figures, config and epoch rows."""
    from pigeon.experiments import list_runs

    return list_runs(project, sort=sort)


def compare(run_dirs: list[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None,
            verbose: bool = True) -> dict[str, Any]:
    """One table (compare.md, compare.json) and overlaid curves (curves.png) of the given run folders."""
    from pigeon.experiments import compare as _compare

    return _compare(run_dirs, out=out, verbose=verbose)


def tune(data: str, time: str | None = None, trials: int | None = None, **options: Any) -> TuneResult:
    """Search training options with Optuna (pigeon[tune]); every trial is an ordinary run.

    Args:
        data: as for train().
        time: the search budget ("1h", "30m", "90s" or hours); trials: the most trials. Give one or both.
        **options: space="lr,weight_decay,label_smoothing", pruner="median"|"halving"|"none", final=True,
            project="runs/tune", name=None, verbose=True, and any train() option as the base of every trial.
    Returns:
        TuneResult: dir, best_params, best_value (validation), best_config (a --config file), final (the best
        options trained once more, with its test report), trials.
    """
    from pigeon.tuning import run_tune

    return run_tune(data, time=time, trials=trials, **options)
