"""`pigeon <verb> [options]`: a thin shell over pigeon.api. Options map one-to-one onto the API's names."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any

from pigeon.config import (
    AMP_MODES,
    BENCH_FORMATS,
    EXPORT_FORMATS,
    INT8_SCHEMES,
    OPTIMIZERS,
    RESIZE_MODES,
    SCHEDULES,
    SELECT_METRICS,
    TASKS,
    AuditConfig,
    BenchConfig,
    ExportConfig,
    ServeConfig,
    TrainConfig,
    parse_imgsz,
)
from pigeon.errors import ConfigError, PigeonError, did_you_mean

TRAIN_HELP = {
    "data": "image folder (root/{train,val,test}/<class>/...), a labels CSV (file,labels[,split]; multi-label) or "
            "built-in: fashion-mnist, digits, mnist, cifar10, cifar100 (see `pigeon datasets`)",
    "task": "auto: a labels CSV is multi-label, a folder one label per image; multilabel: a folder whose images "
            "may sit in several class folders (copies with the same bytes are one image); multiclass",
    "model": "model name (see `pigeon models`); auto: the recipe for this device (pigeon-p on a CPU, pigeon-n "
             "on a GPU), or the --weights checkpoint's own model",
    "weights": "start from these weights: a pigeon checkpoint, .safetensors, .pth state dict (read without "
               "running code), 'timm' (the timm model's pretrained weights) or hf-hub:org/repo[/file]",
    "balance": "class imbalance: auto (sampler, when the largest class has 3x the smallest's images or more), "
               "none, weights (loss weighted by inverse class count) or sampler (class-balanced draws)",
    "epochs": "passes over the training data (default: the recipe's: 15 on a CPU with native bf16, 10 elsewhere)",
    "batch": "images per training step (default: the recipe's: 256 on a CPU, 128 on a GPU)",
    "imgsz": "input size: one number for a square (64) or HEIGHTxWIDTH (96x192); default: the data's own size "
             "(28 for fashion-mnist; a folder's median image side), at most 64 for folders",
    "channels": "1 (grayscale) or 3 (RGB); default: 1 if every image is grayscale, else 3; for rasters (.npy, "
                "multi-band or 16-bit TIFF) their band count",
    "resize": "crop: scale to cover imgsz then centre crop; pad: scale to fit then letterbox; stretch: ignore aspect",
    "optimizer": "sgd (Nesterov momentum) or adamw",
    "lr": "peak learning rate; default 0.2*batch/256 (sgd; 0.4*batch/256 for pigeon-p) or 2e-3*batch/256 (adamw)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay on conv/linear weights; default 5e-4 (sgd) or 0.05 (adamw)",
    "schedule": "onecycle (linear warmup, linear decay) or cosine (linear warmup, cosine decay)",
    "warmup_epochs": "epochs of linear learning-rate warmup",
    "label_smoothing": "label smoothing of the cross-entropy target",
    "calibrate": "fit a softmax temperature on the val split after training, so confidences match accuracy "
                 "(it travels in the checkpoint and every export; --no-calibrate keeps raw softmax)",
    "ema": "evaluate and save an exponential moving average of the weights",
    "ema_decay": "EMA decay per step; default: a horizon of a tenth of the run",
    "amp": "mixed precision: auto (bf16 where the CPU runs it natively, AVX512-BF16 or AMX, unless "
           "ONEDNN_MAX_CPU_ISA limits it; bf16 or fp16 on a GPU), off, bf16, fp16 (GPU)",
    "channels_last": "channels-last memory format (default on, except on mps)",
    "grad_clip": "clip the gradient norm to this value (0 = off)",
    "freeze_epochs": "train only the classifier head for this many epochs (BatchNorm statistics frozen too), "
                     "then everything; needs --weights",
    "backbone_lr_mult": "learning-rate multiplier for everything but the head (needs --weights)",
    "fliplr": "horizontal flip probability; default 0.5 (0 for digits)",
    "translate": "random shift in pixels (pad and crop); default a tenth of imgsz's shorter side",
    "resized_crop": "random resized crop; default on when imgsz's shorter side is 64 or more",
    "erase": "random erasing probability",
    "mixup": "mixup: blend pairs of images and their labels, mixing weight ~ Beta(A, A); 0 = off (try 0.2)",
    "cutmix": "CutMix: paste a box of one image into another, labels weighted by area, Beta(A, A); "
              "0 = off (try 1.0); with --mixup too, each batch is one or the other",
    "val_fraction": "fraction of train held out for validation when the data has no val split (0 = none)",
    "select": "metric that picks the best epoch on val: top1, macro_f1 or loss; map (multi-label, where top1 "
              "means map)",
    "patience": "stop after this many epochs without improvement on val (0 = never)",
    "time": "time budget in hours: the run plans as many epochs as fit (at most --epochs) and stops cleanly",
    "save_period": "also keep weights/epochN.safetensors every N epochs (0 = only best and last)",
    "resume": "continue the run in this folder (runs/train/<name>) from its last finished epoch, exactly",
    "seed": "random seed: the same seed gives the same run on the CPU",
    "deterministic": "use only deterministic algorithms (slower on GPU)",
    "device": "auto, cpu, cuda, cuda:N or mps; 0,1,2,3 trains on those GPUs, one process each, through torchrun",
    "sync_bn": "under torchrun: BatchNorm statistics over the global batch, not each process's share of it",
    "threads": "CPU threads for PyTorch (default: PyTorch's choice)",
    "cache_dir": "where decoded images are cached (default $PIGEON_CACHE_DIR or ~/.cache/pigeon)",
    "project": "parent folder of run folders",
    "name": "run folder name (default <model>-<data>, numbered if taken)",
    "exist_ok": "reuse an existing run folder instead of numbering a new one",
    "plots": "write PNG plots (curves, confusion matrix, predictions)",
    "verbose": "print progress and results",
    "tensorboard": "log scalars, the confusion matrix and sample predictions to <run>/tb/ (pigeon[tensorboard])",
    "mlflow": "log params, metrics and artefacts to MLflow: $MLFLOW_TRACKING_URI, else ./mlruns (pigeon[mlflow])",
}
EXPORT_HELP = {
    "model": "checkpoint to export: runs/train/<name>/weights/best.safetensors",
    "format": "onnx, torchscript or openvino",
    "out": "output path (default: beside the checkpoint: best.onnx, best_int8.onnx, best.torchscript, "
           "best_openvino/)",
    "imgsz": "input size of the exported graph: 64 or HEIGHTxWIDTH (default: the checkpoint's)",
    "dynamic_batch": "accept any batch size (default: batch 1)",
    "opset": "ONNX opset",
    "int8": "static INT8 quantization of the ONNX graph, calibrated on training images",
    "int8_scheme": "INT8 arithmetic: auto (= u8s8-7bit, exact on every x86 CPU), u8s8-7bit (7-bit weights), u8s8 "
                   "(8-bit weights: can saturate on CPUs without VNNI), u8u8",
    "calib_data": "images to calibrate INT8 on: a folder or built-in name (default: the training data)",
    "calib_images": "how many training images calibrate INT8",
    "data": "real images for the parity check (default: the training data named in the checkpoint)",
    "check": "compare the export with PyTorch on real images and refuse it if they disagree",
    "check_images": "how many images the parity check uses",
    "min_agreement": "least top-1 agreement with PyTorch an fp32 export must reach",
    "int8_max_drop": "largest top-1 accuracy drop INT8 may cost against fp32 (0.01 = 1 point)",
    "cache_dir": "where decoded images are cached",
    "verbose": "print the parity report and the written file",
}
BENCH_HELP = {
    "model": "checkpoint to measure: runs/train/<name>/weights/best.safetensors",
    "formats": f"comma-separated: {','.join(BENCH_FORMATS)}",
    "imgsz": "comma-separated input sizes, e.g. 28,64 or 64,96x192 (default: the checkpoint's)",
    "data": "images for accuracy (val split, else test) (default: the training data)",
    "runs": "timed single-image predictions per row (at least 50)",
    "warmup": "untimed predictions before timing",
    "batch": "batch size for the throughput figure",
    "throughput_seconds": "how long to measure throughput per row",
    "cache_dir": "where decoded images are cached",
    "project": "parent folder for bench.json and bench.md",
    "name": "results folder name",
    "verbose": "print each row as it is measured",
}
AUDIT_HELP = {
    "data": "image folder to audit: root/<class>/... or root/{train,val,test}/<class>/... (read only)",
    "out": "report folder for report.md, report.json and thumbs/ (default: runs/audit/<folder name>, numbered); "
           "never inside the data",
    "near_threshold": "largest perceptual distance (0-2) between near duplicates: 0 = same picture, ~0.02 a "
                      "re-encoded copy, different pictures rarely under 0.08",
    "label_check": "look for label errors with a cross-validated model (the slow part; --no-label-check skips it)",
    "model": "model trained for the label check",
    "imgsz": "input size for the label check and the pixel statistics",
    "folds": "cross-validation folds for the label check",
    "epochs": "training epochs per fold",
    "batch": "images per training step (smaller for tiny datasets)",
    "confidence": "least confidence of a prediction that contradicts a label to list the image as a candidate",
    "thumbnails": "most thumbnails per section in report.md",
    "seed": "random seed for folds and training",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "verbose": "print progress and the summary",
}
SERVE_HELP = {
    "home": "where the app keeps pigeon.db, uploaded datasets and its runs (runs/train/, ordinary run folders)",
    "model": "also serve this model at /api/v1/predict: a checkpoint or an export (.onnx, .torchscript, OpenVINO)",
    "host": "address to listen on; anything but loopback needs --token",
    "port": "port to listen on",
    "token": "bearer token every API call must send (also PIGEON_TOKEN); 'auto' makes one and prints a ?token= URL",
    "max_batch": "micro-batching: most images per forward pass (1 turns batching off)",
    "max_wait_ms": "micro-batching: longest wait for a batch to fill",
    "queue_limit": "images waiting for the model before /predict answers 503 + Retry-After",
    "max_request_mb": "largest /predict body",
    "max_upload_mb": "largest dataset upload (zip)",
    "max_unzipped_mb": "largest total size an uploaded zip may unpack to",
    "max_entries": "most members in an uploaded zip",
    "max_ratio": "largest uncompressed/compressed ratio of a zip member (zip bombs)",
    "max_pixels": "largest image (width x height) accepted",
    "max_files": "most images in one /predict request",
    "jobs": "training jobs run at once (more wait in a queue)",
    "min_conf": "/predict answers 'unknown' below this confidence (0-1) unless a request sends its own min_conf",
    "verbose": "print the address and what is served",
}
CHOICES = {"format": EXPORT_FORMATS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES,
           "int8_scheme": INT8_SCHEMES, "resize": RESIZE_MODES, "select": SELECT_METRICS,
           "task": TASKS}


def _size_arg(text: str) -> Any:
    """--imgsz as the Python API would get it (64, or (96, 192)), so a CLI run and an API run store the same
    value; text that is no size goes on as it is, for the config to refuse with its message."""
    try:
        return parse_imgsz(text)
    except ConfigError:
        return text


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type, helps: dict[str, str],
                           skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        base = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
        if any(typing.get_origin(t) is tuple for t in base):  # a size: 64 or 96x192
            base = [_size_arg]
        default = None if f.default is dataclasses.MISSING else f.default
        text = helps.get(f.name, "") + (f" (default: {default})" if default is not None else "")
        if base[0] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(flag, type=base[0], default=default, required=f.default is dataclasses.MISSING,
                                choices=CHOICES.get(f.name), help=text, metavar=None if f.name in CHOICES
                                else f.name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pigeon", allow_abbrev=False,
                                     description="Image classification: train, val, predict, export, bench, "
                                                 "audit; explain, runs, compare, tune; serve.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="{train,val,predict,export,bench,audit,models,datasets,"
                                  "explain,runs,compare,tune,serve}")
    verbs.add_parser = functools.partial(verbs.add_parser, allow_abbrev=False)  # type: ignore[method-assign]

    p = verbs.add_parser("train", help="train a classifier on a folder of images or a built-in dataset",
                         description="Train a classifier. Every option is also a keyword of pigeon.train().")
    _add_dataclass_options(p, TrainConfig, TRAIN_HELP)
    _add_config_option(p)

    p = verbs.add_parser("val", help="measure a trained model on a dataset",
                         description="Top-1/top-5, per-class precision/recall/F1 and the confusion matrix.")
    p.add_argument("--model", required=True, help="checkpoint: runs/train/<name>/weights/best.safetensors")
    p.add_argument("--data", required=True, help="image folder or built-in dataset name")
    p.add_argument("--split", help="split to measure (default: val, else test, else the whole folder)")
    p.add_argument("--batch", type=int, default=256, help="images per batch (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--cache-dir", help="where decoded images are cached")
    p.add_argument("--project", default="runs/val", help="parent folder for the report (default: runs/val)")
    p.add_argument("--name", help="report folder name")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the confusion matrix and calibration PNGs")
    p.add_argument("--min-conf", type=float, metavar="P", help="also report how many images a --min-conf P would "
                   "answer, and their accuracy")

    p = verbs.add_parser("predict", help="predict classes of images",
                         description="Predict on image files, folders or glob patterns (quote globs).")
    p.add_argument("--model", required=True, help="checkpoint: runs/train/<name>/weights/best.safetensors")
    p.add_argument("--source", required=True, nargs="+", help="image file(s), folder(s) or \"glob/*.png\"")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to report per image (default: 5)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--min-conf", type=float, metavar="P", help="answer 'unknown' for images whose calibrated "
                   "confidence is below P (0-1); pick P from the threshold table `pigeon val` prints")
    p.add_argument("--save-json", metavar="PATH", help="write all predictions to this JSON file")
    p.add_argument("--save-csv", metavar="PATH", help="write all predictions to this CSV file")

    p = verbs.add_parser("export", help="export a checkpoint to ONNX (fp32/INT8), TorchScript or OpenVINO",
                         description="Export a checkpoint with its preprocessing contract, checked against "
                                     "PyTorch on real images. Every option is also a keyword of pigeon.export().")
    _add_dataclass_options(p, ExportConfig, EXPORT_HELP)

    p = verbs.add_parser("bench", help="accuracy, latency, throughput and size across formats and input sizes",
                         description="Measure a checkpoint as PyTorch and as each export. Every option is also a "
                                     "keyword of pigeon.bench().")
    _add_dataclass_options(p, BenchConfig, BENCH_HELP)

    p = verbs.add_parser("audit", help="check an image folder: duplicates, leaks, label errors, bad files",
                         description="A read-only audit of an image folder: counts, image statistics, unreadable "
                                     "files, exact and near duplicates within and across splits, and label-error "
                                     "candidates. Writes report.md and report.json. Every option is also a keyword "
                                     "of pigeon.audit().")
    _add_dataclass_options(p, AuditConfig, AUDIT_HELP)

    p = verbs.add_parser("serve", help="the no-code app and the REST API (http://127.0.0.1:8000)",
                         description="Run the app (build, train, evaluate and test classifiers in the browser) and "
                                     "the REST API on this machine. Needs pip install 'pigeon[serve]'. Every option "
                                     "is also a keyword of pigeon.serve().")
    _add_dataclass_options(p, ServeConfig, SERVE_HELP, skip=("allow_host",))
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept this Host header (repeatable; '*' accepts any): for a proxy or a DNS name")

    p = verbs.add_parser("models", help="list the available model names",
                         description="pigeon's own models, and how to name timm and torchvision ones.")
    p.add_argument("--filter", metavar="PATTERN", help="list every model matching this pattern (e.g. "
                   "'resnet*'), timm's and torchvision's included")

    p = verbs.add_parser("datasets", help="list the built-in datasets, their sizes and where each is found",
                         description="The built-in --data names, their splits and sizes, and where each is found "
                                     "on this machine or downloaded from. Downloads nothing. Also pigeon.datasets().")
    p.add_argument("--cache-dir", help="the cache a download goes to (default $PIGEON_CACHE_DIR or ~/.cache/pigeon)")
    _add_insight_verbs(verbs)
    return parser


class _Unset:
    """The default of an option a config file may set: tells "not given" apart from "given its default"."""

    def __repr__(self) -> str:
        return "unset"


UNSET = _Unset()


def _add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="read options from a YAML or JSON file with these option "
                   "names (a run's config.json reproduces it); options given here override the file")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for action in p._actions:
        if action.dest in fields:
            action.default = UNSET


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of `cls` given on the command line (unset ones are left to the file or the defaults)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, UNSET) is not UNSET}


INSIGHT_VERBS = ("explain", "runs", "compare", "tune")


def _add_insight_verbs(verbs: Any) -> None:
    """explain, runs, compare and tune: why a model decided, which run is best, which options are better."""
    from pigeon.engine.saliency import METHODS
    from pigeon.tuning import DEFAULT_SPACE, PRUNERS, SET_BY_TUNE, SPACE, SPACE_HELP

    p = verbs.add_parser("explain", help="heat maps of the image regions behind a prediction (Grad-CAM)",
                         description="Grad-CAM / Grad-CAM++ maps of the predicted (or a chosen) class, written as "
                                     "overlay PNGs and .npy arrays. Also pigeon.explain().")
    p.add_argument("--model", required=True, help="checkpoint: runs/train/<name>/weights/best.safetensors")
    p.add_argument("--source", required=True, nargs="+", help="image file(s), folder(s) or \"glob/*.png\"")
    p.add_argument("--method", default="gradcam", choices=METHODS, help="gradcam or gradcam++ (default: gradcam)")
    p.add_argument("--class", dest="target", metavar="CLASS", help="explain this class (name or index) instead "
                   "of each image's prediction")
    p.add_argument("--layer", metavar="NAME", help="module to explain (default: the last convolutional stage, "
                   "found from the model; names as in model.named_modules())")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/explain/<run name>, numbered)")
    p.add_argument("--batch", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")

    p = verbs.add_parser("runs", help="list training runs with their key options and figures",
                         description="One line per run folder under --project. Also pigeon.runs().")
    p.add_argument("--project", default="runs/train", help="parent folder of run folders (default: runs/train)")
    p.add_argument("--sort", metavar="KEY", help="sort by a column, e.g. val_top1 (best first), seconds, name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = verbs.add_parser("compare", help="one table and overlaid curves of the runs given",
                         description="Writes compare.md, compare.json and curves.png. Also pigeon.compare().")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders: runs/train/<name> ...")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/compare/compare, numbered)")

    p = verbs.add_parser("tune", help="search training options with Optuna; every trial an ordinary run",
                         description="TPE search with a pruner fed by each epoch's validation score; the study "
                                     "(SQLite) continues when the same command is run again. Writes the best "
                                     "options as a config file, history/importance plots, and trains the best "
                                     "once more to report its test score. Other options are the base every "
                                     "trial starts from, as for `pigeon train`. Also pigeon.tune().")
    p.add_argument("--time", metavar="DURATION", help="search budget: 1h, 30m, 90s or hours (trials in flight "
                   "are shortened to fit)")
    p.add_argument("--trials", type=int, help="most trials to run (this session)")
    p.add_argument("--space", default=DEFAULT_SPACE, help="comma-separated options to search: "
                   + "; ".join(f"{k} ({v})" for k, v in SPACE_HELP.items() if k in SPACE)
                   + f" (default: {DEFAULT_SPACE})")
    p.add_argument("--pruner", default="median", choices=PRUNERS, help="median (default), halving (successive "
                   "halving) or none")
    p.add_argument("--final", action=argparse.BooleanOptionalAction, default=True,
                   help="train the best options once more and report the test score")
    p.add_argument("--project", default="runs/tune", help="parent folder of studies (default: runs/tune)")
    p.add_argument("--name", help="study folder name (default: the data's name); an existing study continues")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    p.add_argument("--data", required=True, help=TRAIN_HELP["data"])
    _add_dataclass_options(p, TrainConfig, TRAIN_HELP, skip=SET_BY_TUNE)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(SET_BY_TUNE)
    for action in p._actions:
        if action.dest in fields:
            action.default = UNSET


def _run_insight_verb(args: argparse.Namespace) -> int:
    import pigeon

    if args.verb == "explain":
        result = pigeon.explain(args.model, list(args.source), method=args.method, target=args.target,
                                layer=args.layer, out=args.out, batch=args.batch, device=args.device)
        return 0 if all("error" not in item for item in result.items) else 1
    if args.verb == "runs":
        from pigeon.experiments import text_table

        found = pigeon.runs(args.project, sort=args.sort)
        if args.json:
            print(json.dumps([{k: v for k, v in r.items() if k not in ("rows", "config")} for r in found],
                             indent=2))
        else:
            print(text_table(found) if found else f"no runs in {args.project}")
        return 0
    if args.verb == "compare":
        pigeon.compare(list(args.runs), out=args.out)
        return 0
    if args.verb == "tune":
        from pigeon.tuning import SET_BY_TUNE

        base = {k: v for k, v in _given(args, TrainConfig).items() if k not in SET_BY_TUNE}
        result = pigeon.tune(args.data, time=args.time, trials=args.trials, space=args.space, pruner=args.pruner,
                             final=args.final, project=args.project, name=args.name, verbose=not args.quiet,
                             **base)
        final = result.final
        print(json.dumps({"dir": str(result.dir), "best_config": str(result.best_config),
                          "best_params": result.best_params,
                          "test_top1": final.test["top1"] if final is not None and final.test else None}))
        return 0
    raise AssertionError(args.verb)


def _refuse_unknown(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = parser._subparsers._group_actions[0].choices.get(args.verb) if args.verb else parser  # type: ignore[union-attr]
        known = [s for a in sub._actions for s in a.option_strings]
        bad = next(u for u in unknown if u.startswith("-")) if any(u.startswith("-") for u in unknown) else unknown[0]
        raise ConfigError(f"unknown option {bad.split('=')[0]}{did_you_mean(bad.split('=')[0], known)}; "
                          f"see `pigeon {args.verb or ''} --help`".replace("  ", " "))
    return args


def _print_predictions(preds: list[Any], top_k: int) -> None:
    for p in preds:
        if not p.ok:
            print(f"{p.source}: ERROR {p.error}")
            continue
        if p.multilabel:
            shown = ", ".join(f"{p.classes[i]} {p.probs[i]:.1%}" for i in p.top5[:top_k])
            print(f"{p.source}: {p.label or '(no class above its threshold)'}  [{shown}]")
            continue
        first = 0 if p.abstained else 1  # an abstention lists its best guess among the alternatives
        alts = ", ".join(f"{p.classes[i]} {p.probs[i]:.1%}" for i in p.top5[first:top_k])
        print(f"{p.source}: {p.label} ({p.top1_conf:.1%}" + (f" < min-conf {p.min_conf:g})" if p.abstained
              else ")") + (f"  [{alts}]" if alts else ""))


def _write_predictions(preds: list[Any], json_path: str | None, csv_path: str | None) -> None:
    from pigeon.io import atomic_write_text, write_json

    if json_path:
        write_json(json_path, [p.to_dict() for p in preds])
    if csv_path:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["source", "label", "confidence", "abstained", "top_k", "error"])
        for p in preds:
            d = p.to_dict()
            top = ";".join(f"{t['label']}:{t['prob']:.6f}" for t in d.get("top_k", []))
            writer.writerow([p.source, d.get("label", ""), d.get("confidence", ""), d.get("abstained", ""), top,
                             d.get("error", "") or ""])
        atomic_write_text(csv_path, buf.getvalue())


def _print_models(pattern: str | None) -> int:
    import pigeon
    from pigeon.models import create_model, zoo

    if pattern is not None:
        found = pigeon.list_models(pattern)
        print("\n".join(found) if found else f"no model matches {pattern!r}")
        return 0 if found else 1
    print(f"{'model':<12}{'parameters':>12}  (10 classes, 1 channel, 28x28)")
    for name in pigeon.list_models():
        model = create_model(name, num_classes=10, in_chans=1, imgsz=28)
        print(f"{name:<12}{sum(p.numel() for p in model.parameters()):>12,}")
    for prefix, package in zoo.PREFIXES.items():
        if zoo.available(prefix):
            print(f"{prefix}:<name>  {len(zoo.names(prefix))} {package} architectures, e.g. "
                  f"--model {prefix}:resnet18; list them with `pigeon models --filter 'resnet*'`")
        else:
            print(f"{prefix}:<name>  {package} architectures: pip install 'pigeon[{prefix}]'")
    return 0


def _print_datasets(cache_dir: str | None) -> int:
    import pigeon

    rows = [(d.name, f"{d.train:,}", f"{d.test:,}", str(d.classes), d.image,
             f"{d.download_bytes / 1e6:.1f} MB" if d.download_bytes else "-", d.where)
            for d in pigeon.datasets(cache_dir)]
    head = ("name", "train", "test", "classes", "image", "download", "where")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    for row in [head, *rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join([*cells, row[-1]]))
    return 0


def run(args: argparse.Namespace) -> int:
    import pigeon

    if args.verb in INSIGHT_VERBS:
        return _run_insight_verb(args)
    if args.verb == "train":
        options = _given(args, TrainConfig)
        result = pigeon.train(config=args.config, **options)
        head = result.headline
        figure = "map" if result.config.task == "multilabel" else "top1"
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the run, not one per process
            print(json.dumps({"run_dir": str(result.run_dir), "best": str(result.best),
                              f"test_{figure}": result.test and result.test[figure],
                              f"val_{figure}": result.val and result.val[figure],
                              "seconds": round(result.seconds, 1)}))
        return 0 if head is None or head["n"] > 0 else 1
    if args.verb == "val":
        pigeon.val(args.model, args.data, split=args.split, batch=args.batch, device=args.device,
                   cache_dir=args.cache_dir, project=args.project, name=args.name, plots=args.plots,
                   min_conf=args.min_conf)
        return 0
    if args.verb == "predict":
        preds = pigeon.predict(args.model, list(args.source), top_k=args.top_k, batch=args.batch,
                               device=args.device, min_conf=args.min_conf)
        preds = preds if isinstance(preds, list) else [preds]
        _print_predictions(preds, args.top_k)
        _write_predictions(preds, args.save_json, args.save_csv)
        return 0 if all(p.ok for p in preds) else 1
    if args.verb == "export":
        options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExportConfig)}
        result = pigeon.export(**options)
        print(json.dumps({"path": str(result.path), "parity": result.parity}))
        return 0
    if args.verb == "bench":
        options = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)}
        pigeon.bench(**options)
        return 0
    if args.verb == "audit":
        options = {f.name: getattr(args, f.name) for f in dataclasses.fields(AuditConfig)}
        audited = pigeon.audit(**options)
        print(json.dumps({"dir": str(audited.dir), "findings": {f["kind"]: f["count"] for f in audited.findings}}))
        return 0
    if args.verb == "models":
        return _print_models(args.filter)
    if args.verb == "datasets":
        return _print_datasets(args.cache_dir)
    if args.verb == "serve":
        from pigeon.serve import serve

        options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)}
        serve(**{**options, "allow_host": tuple(args.allow_host)})
        return 0
    raise AssertionError(args.verb)


def distributed_gpus(args: argparse.Namespace) -> list[int] | None:
    """`pigeon train --device 0,1` outside torchrun: the GPUs to start one process each on."""
    if args.verb != "train" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    from pigeon.engine.distributed import device_list

    return device_list(str(args.device))


def _with_device(argv: list[str], device: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--device":
            out += ["--device", device]
            skip = i + 1 < len(argv)
        elif arg.startswith("--device="):
            out.append(f"--device={device}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _refuse_unknown(parser, list(sys.argv[1:] if argv is None else argv))
        if args.version:
            from pigeon._version import __version__

            print(f"pigeon {__version__}")
            return 0
        if not args.verb:
            parser.print_help()
            return 2
        gpus = distributed_gpus(args)
        if gpus:
            from pigeon.engine.distributed import launch

            return launch(_with_device(list(sys.argv[1:] if argv is None else argv), "cuda"), len(gpus), gpus)
        return run(args)
    except PigeonError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
