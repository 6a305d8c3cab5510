"""Frozen run configurations, validated where input arrives (CLI or Python keyword arguments)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from pigeon.errors import ConfigError, did_you_mean

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle")
AMP_MODES = ("auto", "off", "bf16", "fp16")
RESIZE_MODES = ("crop", "pad", "stretch")
SELECT_METRICS = ("top1", "macro_f1", "loss", "map")  # multi-label runs read top1 as map
BALANCE_MODES = ("auto", "none", "weights", "sampler")
TASKS = ("auto", "multiclass", "multilabel")  # auto: a labels CSV is multi-label, anything else one label per image


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}"
                          f"{did_you_mean(str(value), choices)}")


def _check_range(name: str, value: float | None, lo: float, hi: float | None = None,
                 lo_open: bool = False) -> None:
    if value is None:
        return
    too_low = value <= lo if lo_open else value < lo
    if too_low or (hi is not None and value > hi):
        bounds = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ConfigError(f"{name}={value!r} is out of range; it must be {bounds}")


SIZE_RANGE = (8, 1024)  # pixels, per side
Size = int | tuple[int, int]  # an input size: an int is a square, else (height, width)


def parse_imgsz(value: Any, name: str = "imgsz") -> int | tuple[int, int]:
    """An input size: 64, "64", "96x192", (96, 192) or [96, 192] (a config file's JSON) -> 64 or (96, 192).

    A square is always the plain int, so a square run's config, checkpoint, contract and cache key read
    exactly as they did before HxW sizes existed; only a non-square size is a (height, width) tuple.
    """
    flag = "--" + name.replace("_", "-")
    fix = (f"give one number for a square ({flag} 64) or HEIGHTxWIDTH ({flag} 96x192; in Python "
           f"{name}=(96, 192) or {name}='96x192')")
    sides: Any = value
    if isinstance(value, str):
        parts = value.strip().lower().split("x")
        if not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"{name}={value!r} is not an input size; {fix}")
        sides = [int(p) for p in parts]
    elif isinstance(value, (list, tuple)):
        sides = list(value) if len(value) == 2 else []  # (height, width), never a lone side
    else:
        sides = [value]
    if len(sides) not in (1, 2) or any(isinstance(s, bool) or not isinstance(s, int) for s in sides):
        raise ConfigError(f"{name}={value!r} is not an input size; {fix}")
    lo, hi = SIZE_RANGE
    if len(sides) == 1 or sides[0] == sides[1]:
        _check_range(name, sides[0], lo, hi)
        return int(sides[0])
    for side, what in zip(sides, ("height", "width")):
        if not lo <= side <= hi:
            raise ConfigError(f"{name}={value!r}: the {what} {side} is out of range; each side must be >= {lo} "
                              f"and <= {hi} ({flag} HEIGHTxWIDTH, e.g. {flag} 96x192)")
    return int(sides[0]), int(sides[1])


def size_hw(imgsz: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) of a size as parse_imgsz returns it (or as JSON holds it)."""
    if isinstance(imgsz, (tuple, list)):
        return int(imgsz[0]), int(imgsz[1])
    return int(imgsz), int(imgsz)


def as_size(stored: int | tuple[int, int] | list[int]) -> Size:
    """A stored size (a checkpoint's or contract's int or [h, w]) in parse_imgsz's form, without its range check:
    what was saved is what the model was built for."""
    h, w = size_hw(stored)
    return h if h == w else (h, w)


def size_text(imgsz: int | tuple[int, int] | list[int]) -> str:
    """64 -> "64", (96, 192) -> "96x192": how a size is written on the command line and in messages."""
    h, w = size_hw(imgsz)
    return str(h) if h == w else f"{h}x{w}"


def check_types(config: Any) -> None:
    """Refuse a value of the wrong type, naming the field: "3" is not an epoch count, nor is 2.5."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        hint = hints[f.name]
        unions = (typing.Union, getattr(types, 'UnionType', typing.Union))
        # tuple[str, ...] is checked as a tuple; Optional/Union hints as their members
        allowed = tuple(typing.get_origin(t) or t for t in
                        (typing.get_args(hint) if typing.get_origin(hint) in unions else (hint,)))
        if value is None and type(None) in allowed:
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, tuple(t for t in allowed if isinstance(t, type)))
        if not ok:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"{f.name}={value!r} has the wrong type; it must be {names}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. `None` means "choose from the data or model"."""

    data: str = ""
    task: str = "auto"  # see TASKS
    model: str = "auto"  # the recipe for the device (pigeon.engine.recipe); a pigeon checkpoint's own with weights
    weights: str | None = None
    epochs: int | None = None  # None: the recipe's
    batch: int | None = None  # None: the recipe's
    imgsz: int | tuple[int, int] | None = None  # a square, or (height, width); "96x192" is accepted
    channels: int | None = None
    resize: str = "crop"
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    balance: str = "auto"  # class imbalance: auto (sampler at 3:1), none, weights (weighted loss) or sampler
    calibrate: bool = True  # fit a softmax temperature on the val split after training (pigeon.calibration)
    ema: bool = True
    ema_decay: float | None = None
    amp: str = "auto"
    channels_last: bool | None = None
    grad_clip: float = 0.0
    freeze_epochs: int = 0
    backbone_lr_mult: float = 1.0
    fliplr: float | None = None
    translate: int | None = None
    resized_crop: bool | None = None
    erase: float = 0.0
    mixup: float = 0.0  # Beta alpha of mixup (pigeon.data.mix); 0 = off
    cutmix: float = 0.0  # Beta alpha of CutMix; 0 = off; with mixup too, each batch is one or the other
    val_fraction: float = 0.1
    select: str = "top1"
    patience: int = 0
    time: float | None = None
    save_period: int = 0
    resume: str | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # under torchrun each rank takes cuda:LOCAL_RANK (or the CPU)
    sync_bn: bool = False  # data-parallel runs: BatchNorm statistics over the global batch
    threads: int | None = None
    cache_dir: str | None = None
    project: str = "runs/train"
    name: str | None = None
    exist_ok: bool = False
    plots: bool = True
    verbose: bool = True
    tensorboard: bool = False  # log to <run>/tb/ (pigeon[tensorboard])
    mlflow: bool = False  # log to MLflow: $MLFLOW_TRACKING_URI or ./mlruns (pigeon[mlflow])

    def __post_init__(self) -> None:
        if self.imgsz is not None:
            object.__setattr__(self, "imgsz", parse_imgsz(self.imgsz))
        check_types(self)
        if not self.data and not self.resume:
            raise ConfigError("data is required: a folder of images or a built-in name (see `pigeon datasets`)")
        _check_range("epochs", self.epochs, 1)
        _check_range("batch", self.batch, 1)
        if self.channels is not None and not 1 <= self.channels <= 64:
            raise ConfigError(f"channels={self.channels!r} is not valid; choose 1 (grayscale), 3 (RGB), the band count "
                              "of multi-band rasters (up to 64), or leave it unset (auto)")
        _check_choice("resize", self.resize, RESIZE_MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("select", self.select, SELECT_METRICS)
        _check_choice("balance", self.balance, BALANCE_MODES)
        _check_choice("task", self.task, TASKS)
        _check_range("lr", self.lr, 0.0, lo_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0)
        _check_range("warmup_epochs", self.warmup_epochs, 0.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.99)
        _check_range("ema_decay", self.ema_decay, 0.0, 1.0)
        _check_range("grad_clip", self.grad_clip, 0.0)
        _check_range("freeze_epochs", self.freeze_epochs, 0)
        _check_range("backbone_lr_mult", self.backbone_lr_mult, 0.0)
        if self.backbone_lr_mult != 1.0 and not self.weights:
            raise ConfigError("backbone_lr_mult needs weights: from scratch there is no pretrained backbone to treat "
                              "gently. Pass weights=... (--weights) or drop backbone_lr_mult")
        if self.freeze_epochs and not self.weights:
            raise ConfigError("freeze_epochs needs weights: a frozen, randomly initialised backbone would train "
                              "only the head. Pass weights=... (--weights) or drop freeze_epochs")
        _check_range("fliplr", self.fliplr, 0.0, 1.0)
        _check_range("translate", self.translate, 0)
        _check_range("erase", self.erase, 0.0, 1.0)
        _check_range("mixup", self.mixup, 0.0, 100.0)
        _check_range("cutmix", self.cutmix, 0.0, 100.0)
        _check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        _check_range("patience", self.patience, 0)
        _check_range("time", self.time, 0.0, lo_open=True)
        _check_range("save_period", self.save_period, 0)
        _check_range("threads", self.threads, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PredictConfig:
    top_k: int = 5
    batch: int = 64
    device: str = "auto"
    min_conf: float | None = None  # below this calibrated confidence the answer is "unknown"

    def __post_init__(self) -> None:
        check_types(self)
        _check_range("top_k", self.top_k, 1)
        _check_range("batch", self.batch, 1)
        _check_range("min_conf", self.min_conf, 0.0, 1.0)


EXPORT_FORMATS = ("onnx", "torchscript", "openvino")
INT8_SCHEMES = ("auto", "u8s8-7bit", "u8s8", "u8u8")  # see pigeon.deploy.exporter.INT8_RECIPES


@dataclass(frozen=True)
class ExportConfig:
    """An export of a checkpoint; `check` runs the parity check against PyTorch on real images."""

    model: str
    format: str = "onnx"
    out: str | None = None
    imgsz: int | tuple[int, int] | None = None  # a square, or (height, width); "96x192" is accepted
    dynamic_batch: bool = False
    opset: int = 18
    int8: bool = False
    int8_scheme: str = "auto"
    calib_data: str | None = None
    calib_images: int = 256
    data: str | None = None
    check: bool = True
    check_images: int = 500
    min_agreement: float = 0.995
    int8_max_drop: float = 0.01
    cache_dir: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.imgsz is not None:
            object.__setattr__(self, "imgsz", parse_imgsz(self.imgsz))
        check_types(self)
        _check_choice("format", self.format, EXPORT_FORMATS)
        _check_range("opset", self.opset, 18, 30)
        _check_choice("int8_scheme", self.int8_scheme, INT8_SCHEMES)
        _check_range("calib_images", self.calib_images, 1)
        _check_range("check_images", self.check_images, 1)
        _check_range("min_agreement", self.min_agreement, 0.0, 1.0)
        _check_range("int8_max_drop", self.int8_max_drop, 0.0, 1.0)
        if self.int8 and self.format != "onnx":
            raise ConfigError(f"int8 is a post-training quantization of the ONNX graph; use format='onnx' with int8, "
                              f"not {self.format!r}")


BENCH_FORMATS = ("torch", "onnx", "onnx-int8", "torchscript", "openvino")


@dataclass(frozen=True)
class BenchConfig:
    """`pigeon bench`: formats and input sizes are comma-separated lists, as on the command line."""

    model: str
    formats: str = "torch,onnx,onnx-int8,openvino"
    imgsz: str | None = None
    data: str | None = None
    runs: int = 100
    warmup: int = 10
    batch: int = 64
    throughput_seconds: float = 3.0
    cache_dir: str | None = None
    project: str | None = "runs/bench"
    name: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        for fmt in self.format_list:
            _check_choice("formats", fmt, BENCH_FORMATS)
        parts = [v.strip().lower() for v in (self.imgsz or "").split(",") if v.strip()]
        if not all(p.replace("x", "", 1).isdigit() and not p.startswith("x") and not p.endswith("x") for p in parts):
            raise ConfigError(f"imgsz={self.imgsz!r} is not a comma-separated list of sizes, e.g. 28,64 or "
                              "64,96x192 (HEIGHTxWIDTH)")
        self.sizes  # noqa: B018 - parsing each size checks its range
        _check_range("runs", self.runs, 50)  # fewer warm runs make a p90 meaningless
        _check_range("warmup", self.warmup, 0)
        _check_range("batch", self.batch, 1)
        _check_range("throughput_seconds", self.throughput_seconds, 0.0, lo_open=True)

    @property
    def format_list(self) -> list[str]:
        return [f.strip() for f in self.formats.split(",") if f.strip()]

    @property
    def sizes(self) -> list[int | tuple[int, int]]:
        return [parse_imgsz(v.strip()) for v in (self.imgsz or "").split(",") if v.strip()]


@dataclass(frozen=True)
class AuditConfig:
    """`pigeon audit`: a read-only look at an image folder; the report goes to `out` (default
    runs/audit/<folder name>), never into the data."""

    data: str
    out: str | None = None
    near_threshold: float = 0.06
    label_check: bool = True
    model: str = "pigeon-n"
    imgsz: int = 32
    folds: int = 5
    epochs: int = 10
    batch: int = 64
    confidence: float = 0.7
    thumbnails: int = 50
    seed: int = 0
    device: str = "auto"
    verbose: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        if not self.data:
            raise ConfigError("data is required: the image folder to audit (root/<class>/... or "
                              "root/{train,val,test}/<class>/...)")
        _check_range("near_threshold", self.near_threshold, 0.0, 2.0)
        _check_range("imgsz", self.imgsz, 8, 1024)
        _check_range("folds", self.folds, 2, 20)
        _check_range("epochs", self.epochs, 1)
        _check_range("batch", self.batch, 2)  # BatchNorm needs two samples a step
        _check_range("confidence", self.confidence, 0.0, 1.0, lo_open=True)
        _check_range("thumbnails", self.thumbnails, 0)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """`pigeon serve`: the no-code app and the REST API, on one machine.

    The home holds everything the app keeps: pigeon.db (SQLite), datasets/ (uploads, one fresh folder each) and
    runs/train/ (ordinary run folders the CLI can open; CLI runs made there show up in the app).
    """

    home: str = "~/.local/share/pigeon"
    model: str | None = None  # also serve this model: any pigeon.load path (.safetensors, .onnx, ...)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required off loopback; "auto" makes one and prints a ?token= URL once
    allow_host: tuple[str, ...] = ()  # extra Host header values accepted (DNS-rebinding guard); "*" accepts any
    max_batch: int = 16  # micro-batching: at most this many images per forward pass (1 turns batching off)
    max_wait_ms: float = 5.0  # ... and wait at most this long for a batch to fill
    queue_limit: int = 256  # images waiting for the model beyond this get 503 + Retry-After
    max_request_mb: float = 32.0  # a predict request's body
    max_upload_mb: float = 512.0  # a dataset archive's body
    max_unzipped_mb: float = 2048.0  # all members of one archive, uncompressed
    max_entries: int = 100_000  # members in one archive
    max_ratio: float = 200.0  # a member's uncompressed / compressed size (zip bombs)
    max_pixels: int = 40_000_000  # one image (decompression bombs)
    max_files: int = 256  # images in one predict request
    jobs: int = 1  # training jobs run at once; more wait in a queue
    min_conf: float | None = None  # /predict answers "unknown" below this confidence unless a request sets its own
    verbose: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.allow_host, list):
            object.__setattr__(self, "allow_host", tuple(self.allow_host))
        check_types(self)
        _check_range("port", self.port, 0, 65535)
        _check_range("max_batch", self.max_batch, 1, 1024)
        _check_range("max_wait_ms", self.max_wait_ms, 0.0, 1000.0)
        _check_range("queue_limit", self.queue_limit, 1)
        for name in ("max_request_mb", "max_upload_mb", "max_unzipped_mb", "max_ratio"):
            _check_range(name, getattr(self, name), 0.0, lo_open=True)
        _check_range("max_entries", self.max_entries, 1)
        _check_range("max_pixels", self.max_pixels, 1)
        _check_range("max_files", self.max_files, 1)
        _check_range("jobs", self.jobs, 1, 64)
        _check_range("min_conf", self.min_conf, 0.0, 1.0)
        if self.host not in LOOPBACK_HOSTS and not self.token:
            raise ConfigError(f"host={self.host!r} is reachable from other machines, so pigeon serve needs a token "
                              "there: --token SECRET, PIGEON_TOKEN=SECRET, or --token auto (prints a ?token= URL "
                              "once). Or keep the default --host 127.0.0.1")

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser()


C = TypeVar("C")


def build(cls: type[C], **options: Any) -> C:
    """Make a config from keyword options, refusing unknown ones with the closest valid name."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in options:
        if key not in known:
            raise ConfigError(f"unknown option {key!r}{did_you_mean(key, known)}; "
                              f"valid options: {', '.join(sorted(known))}")
    try:
        return cls(**options)
    except TypeError as err:  # a required field is missing
        raise ConfigError(str(err)) from None

