"""The training run: data -> model -> epochs of (augment, step, EMA) -> validation -> checkpoints and plots."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pigeon.config import TrainConfig, size_text
from pigeon.data import Dataset, load_dataset, with_validation
from pigeon.data.augment import MIRROR_HINT_RATIO, Augment, mirror_ratio
from pigeon.data.mix import mix, mix_params
from pigeon.data.preprocess import normalize
from pigeon.data.rasters import for_display  # a raster's picture: its first three bands, in 8 bits
from pigeon.engine import balance, checkpoint, distributed
from pigeon.engine.device import amp_choice, amp_dtype, autocast, select_device
from pigeon.engine.ema import EMA
from pigeon.engine.evaluate import logits_for, report_for
from pigeon.engine.pretrained import Weights, fit_weights, read_weights
from pigeon.engine.recipe import AUTO_MODEL, default_recipe, describe
from pigeon.engine.schedule import ema_decay_for, lr_at
from pigeon.errors import CheckpointError, ConfigError
from pigeon.io import atomic_path, atomic_write_text, write_json
from pigeon.metrics import format_report
from pigeon.models import check_model_name, create_model
from pigeon.models.surgery import head_parameter_names
from pigeon.progress import progress


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best: Path
    last: Path
    config: TrainConfig
    val: dict[str, Any] | None  # report of the selected model on the validation split
    test: dict[str, Any] | None  # report of the selected model on the test split
    epochs: int
    seconds: float

    @property
    def headline(self) -> dict[str, Any] | None:
        return self.test or self.val


# SGD's peak learning rate per 256 images of batch. pigeon-p, half as wide, takes twice pigeon-n's: on the 10%
# of Fashion-MNIST's train split held out for validation (never the test split), 10 epochs at batch 256 reached
# 92.83% and 93.37% at 0.4 against 92.18% and 92.90% at 0.2 (seeds 0 and 1).
SGD_LR_PER_256 = {"pigeon-p": 0.4}


def resolve(cfg: TrainConfig, ds: Dataset, device: torch.device) -> TrainConfig:
    """Fill every "choose for me" (None/auto) option from the data and device; the result is what runs."""
    spec = ds.preprocess
    sgd_lr = SGD_LR_PER_256.get(cfg.model, 0.2)
    lr = cfg.lr or (sgd_lr * cfg.batch / 256 if cfg.optimizer == "sgd" else 2e-3 * cfg.batch / 256)
    amp = amp_dtype(device, cfg.amp)
    n_train = len(ds.splits["train"])
    counts = balance.class_counts(ds.splits["train"].labels, len(ds.classes))
    total_steps = n_train // min(cfg.batch, n_train) * cfg.epochs
    multilabel = ds.task == "multilabel"
    if not multilabel and cfg.select == "map":
        raise ConfigError("select=map (mean average precision) is for multi-label runs; choose top1, macro_f1 or "
                          "loss for a single-label one")
    return dataclasses.replace(
        cfg, imgsz=spec.imgsz, channels=spec.channels, lr=lr, task=ds.task,
        select="map" if multilabel and cfg.select == "top1" else cfg.select,
        ema_decay=cfg.ema_decay if cfg.ema_decay is not None else ema_decay_for(total_steps),
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else (5e-4 if cfg.optimizer == "sgd" else 0.05),
        balance=balance.resolve(cfg.balance, counts, multilabel),
        fliplr=ds.fliplr if cfg.fliplr is None else cfg.fliplr,
        translate=cfg.translate if cfg.translate is not None else max(1, min(spec.hw) // 10),
        resized_crop=cfg.resized_crop if cfg.resized_crop is not None else min(spec.hw) >= 64,
        amp={None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp],
        channels_last=cfg.channels_last if cfg.channels_last is not None else device.type != "mps",
        device=str(device))


def apply_recipe(cfg: TrainConfig, device: torch.device, weights: Weights | None,
                 train_images: int | None = None) -> tuple[TrainConfig, str]:
    """Fill model (when "auto"), epochs and batch (when None) from the device's recipe; with a pigeon checkpoint
    in `weights`, the model is the checkpoint's own. Returns the config and the line that says what was chosen."""
    recipe = default_recipe(device, amp_dtype(device, cfg.amp), train_images)
    model = cfg.model
    if model == AUTO_MODEL and weights is not None:
        if not weights.model:
            raise ConfigError(f"weights={weights.source!r} does not say which architecture it was saved from; name "
                              "it with --model (e.g. --model tv:resnet18 or --model timm:resnet18)")
        model = weights.model
    chosen = {"model": cfg.model == AUTO_MODEL and weights is None, "epochs": cfg.epochs is None,
              "batch": cfg.batch is None}
    cfg = dataclasses.replace(cfg, model=recipe.model if chosen["model"] else model,
                              epochs=cfg.epochs or recipe.epochs, batch=cfg.batch or recipe.batch)
    return cfg, describe(recipe, chosen)


def _flip_hint(ds: Dataset, fliplr: float) -> str | None:
    """Advice to try --fliplr 0 when the default flips images that a mirror turns into something else."""
    if fliplr <= 0:
        return None
    train = ds.splits["train"]
    ratio = mirror_ratio(train.images, train.labels)
    if ratio < MIRROR_HINT_RATIO:
        return None
    return (f"flips are on by default (--fliplr {fliplr:g}), but a mirror moves this data's class means "
            f"{ratio:.2f}x as far as the gap to the nearest other class (as for digits or letters, unlike "
            "clothes or photos): try --fliplr 0")


def make_run_dir(project: str, name: str, exist_ok: bool) -> Path:
    base = Path(project) / name
    if exist_ok or not base.exists():
        base.mkdir(parents=True, exist_ok=True)
        return base
    for i in range(2, 10_000):
        candidate = Path(project) / f"{name}-{i}"
        if not candidate.exists():
            candidate.mkdir(parents=True)
            return candidate
    raise RuntimeError(f"too many runs named {name} in {project}")


def param_groups(model: nn.Module, weight_decay: float, head: set[str] | None = None,
                 backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups, each with an `lr_mult` that scales the scheduled learning rate.

    Only weight matrices and kernels are decayed: decaying BatchNorm scales and biases just fights the data.
    With `head` (parameter names), everything else is the backbone and gets `backbone_lr_mult`.
    """
    groups: list[dict[str, Any]] = []
    for in_head in (False, True) if head else (False,):
        named = [(n, p) for n, p in model.named_parameters() if head is None or (n in head) == in_head]
        mult = 1.0 if in_head or head is None else backbone_lr_mult
        groups += [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": weight_decay, "lr_mult": mult},
                   {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0, "lr_mult": mult}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: TrainConfig, head: set[str] | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, float(cfg.weight_decay or 0.0), head, cfg.backbone_lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=float(cfg.lr or 0), momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=float(cfg.lr or 0), betas=(0.9, 0.999))


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, lr: float, amp: torch.dtype | None, label_smoothing: float,
               grad_clip: float, class_weight: torch.Tensor | None = None, multilabel: bool = False) -> torch.Tensor:
    """One optimizer step; `y` is [N] class indices, or [N, K] soft targets (mixup, CutMix).

    Multi-label: `y` is [N, K] multi-hot (or mixed) targets, the loss binary cross-entropy per class, smoothed
    towards 1/2 and summed over classes, and `class_weight` weighs each class's positives (BCE's pos_weight)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    with autocast(x.device, amp):
        if multilabel:
            target = y * (1 - label_smoothing) + label_smoothing / 2
            # Summed over classes, averaged over images: a mean over classes too would shrink every gradient K
            # times below softmax cross-entropy's, so the learning rates tuned for that would barely move it.
            loss = F.binary_cross_entropy_with_logits(model(x).float(), target, pos_weight=class_weight,
                                                      reduction="sum") / len(x)
        else:
            loss = F.cross_entropy(model(x), y, weight=class_weight, label_smoothing=label_smoothing)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def set_backbone_frozen(model: nn.Module, head: set[str], frozen: bool) -> None:
    """Train mode, with the backbone's weights and BatchNorm statistics fixed while `frozen`.

    Frozen parameters get no gradient, so the optimizer skips them (no update, no momentum, no decay) and
    backward stops at the head, which makes frozen epochs cheap.
    """
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(name in head or not frozen)
    if frozen:
        head_modules = {name.rpartition(".")[0] for name in head}
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in head_modules:
                m.eval()


def _score(report: dict[str, Any], metric: str) -> float:
    return -report["loss"] if metric == "loss" else float(report[metric])


RESUME_OVERRIDES = ("resume", "verbose", "plots", "device", "threads", "cache_dir", "time", "save_period",
                    "tensorboard", "mlflow")


def resume_config(cfg: TrainConfig) -> TrainConfig:
    """The configuration a run was started with, to continue it; only options that cannot change its result
    (where it runs, what it prints, when it stops and saves) may be given again."""
    run_dir = Path(str(cfg.resume))
    saved_path, state_path = run_dir / "config.json", run_dir / "weights" / "last.state.pt"
    if not saved_path.is_file() or not state_path.is_file():
        raise ConfigError(f"{run_dir}: not a run that can be resumed (it needs config.json and weights/"
                          "last.state.pt, written after the first epoch); give a folder under runs/train/")
    saved = json.loads(saved_path.read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in RESUME_OVERRIDES and k != "data"
                     and v != defaults[k] and v != saved.get(k))
    if cfg.data and cfg.data != saved["data"]:
        changed.insert(0, "data")
    if changed:
        raise ConfigError(f"resume continues {run_dir} exactly as it was configured; drop {', '.join(changed)} "
                          f"(only {', '.join(RESUME_OVERRIDES[1:])} may be given), or start a new run with "
                          f"--weights {run_dir / 'weights' / 'last.safetensors'}")
    given = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if getattr(cfg, k) != defaults[k]}
    return dataclasses.replace(TrainConfig(**{k: v for k, v in saved.items() if k in defaults}), **given)


Events = Callable[[dict[str, Any]], None]
EVENT_EVERY = 10  # training steps between two "progress" events


class StopRun(Exception):  # noqa: N818 - a request, not an error
    """Raised by an events callable on an "epoch" event to end the run cleanly after that epoch (a tuner's
    pruning): the epoch is saved and the run finishes as usual, with its reason in summary.json["stopped"]."""


def train(cfg: TrainConfig, events: Events | None = None) -> TrainResult:
    """Run training; process-wide torch settings it changes (threads, determinism) are restored after.

    `events`, when given, is called with plain dicts as the run goes (the app's progress feed): "start" (run
    folder, epochs, steps), "progress" every EVENT_EVERY steps (loss, images/s), "epoch" (its results.csv row)
    and "done" (the summary). Raising StopRun from the "epoch" event ends the run after that epoch.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    world = distributed.world_from_env()
    try:
        return _train(resume_config(cfg) if cfg.resume else cfg, events or (lambda e: None))
    except BaseException as err:
        if world.active:  # every rank says why it stopped, and how to go on
            print(f"\nrank {world.rank} of {world.size}: stopped: {type(err).__name__}: {err}. The state after the "
                  "last whole epoch is kept: continue with `pigeon train --resume <run folder>`, with any number "
                  "of processes", file=sys.stderr, flush=True)
        raise
    finally:
        distributed.stop(world)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(cfg: TrainConfig, emit: Events) -> TrainResult:
    t0 = time.perf_counter()
    if cfg.model != AUTO_MODEL:
        check_model_name(cfg.model)
    world, rank_device = distributed.start(cfg.device)
    say = print if cfg.verbose and world.main else (lambda *a, **k: None)
    if not world.main:
        emit = lambda event: None  # noqa: E731 - rank 0 reports for all
    device = rank_device or select_device(cfg.device)
    # Fail before decoding any data. A resumed run has its weights in its state already.
    weights = read_weights(cfg.weights, cfg.model) if cfg.weights and not cfg.resume else None
    apply_recipe(cfg, device, weights)  # refuses model auto with weights that do not name their model
    if weights is not None and weights.preprocess and cfg.imgsz is None:
        # pigeon's layout depends on the input size, so its checkpoints fine-tune at the size they learnt
        cfg = dataclasses.replace(cfg, imgsz=weights.preprocess["imgsz"])  # a square's int or [h, w]
        say(f"note: imgsz {size_text(cfg.imgsz)} follows the checkpoint in --weights; set --imgsz to change it")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if not world.main:
        distributed.barrier(world)  # rank 0 decodes and caches the folder; the others then read its cache
    ds = load_dataset(cfg.data, imgsz=cfg.imgsz, channels=cfg.channels, resize=cfg.resize,
                      cache_dir=cfg.cache_dir, verbose=cfg.verbose and world.main, task=cfg.task)
    if world.main:
        distributed.barrier(world)
    multilabel = ds.task == "multilabel"
    ds = with_validation(ds, cfg.val_fraction, cfg.seed)
    cfg, recipe_note = apply_recipe(cfg, device, weights, len(ds.splits["train"]))
    if cfg.patience and "val" not in ds.splits:
        raise ConfigError("patience needs a validation split to watch: set val_fraction > 0 or give the "
                          "dataset a val/ folder, or drop patience")
    precision = amp_choice(device, cfg.amp)[1]
    flip_by_default, balance_given = cfg.fliplr is None, cfg.balance
    cfg = resolve(cfg, ds, device)
    counts = balance.class_counts(ds.splits["train"].labels, len(ds.classes))
    balance_note = None if cfg.resume else balance.describe(balance_given, cfg.balance, counts, list(ds.classes),
                                                            multilabel)
    spec, classes = ds.preprocess, list(ds.classes)
    model = create_model(cfg.model, num_classes=len(classes), in_chans=spec.channels, imgsz=spec.imgsz)
    transfer = fit_weights(model, weights, classes, cfg.model) if weights is not None else None  # before any file
    batch = min(cfg.batch, len(ds.splits["train"].labels))
    distributed.check_batch(world, batch)
    slug = re.sub(r"[^\w.-]+", "_", ds.name)
    if cfg.resume:
        run_dir = Path(cfg.resume)
    else:  # rank 0 picks the folder (runs/train/name2 when name exists) and tells the others
        run_dir = Path(distributed.broadcast_text(world, str(make_run_dir(
            cfg.project, cfg.name or f"{cfg.model}-{slug}", cfg.exist_ok)) if world.main else "", device))
    if world.main:
        (run_dir / "weights").mkdir(exist_ok=True)
        write_json(run_dir / "config.json", cfg.to_dict())
    hint = (_flip_hint(ds, float(cfg.fliplr or 0)) if flip_by_default and not cfg.resume and not multilabel
            else None)
    notes = [recipe_note, *ds.notes, hint, balance_note]
    for note in filter(None, notes):
        say(f"note: {note}")
    if ds.skipped and world.main:
        atomic_write_text(run_dir / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in ds.skipped))
        say(f"skipped {len(ds.skipped)} file(s) that are not readable images; list in {run_dir / 'skipped.txt'}")
        for p, why in ds.skipped[:5]:
            say(f"  {p}: {why}")

    if transfer is not None:
        say(transfer.describe())
    train_split = ds.splits["train"]
    eval_name = "val" if "val" in ds.splits else ("test" if "test" in ds.splits else None)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.sync_bn and world.active:
        model = distributed.sync_batchnorm(model, device)
    model = model.to(device).to(memory_format=memory_format)
    amp = amp_dtype(device, str(cfg.amp))
    head = head_parameter_names(model) if cfg.weights else None
    opt = make_optimizer(model, cfg, head)
    # What the steps call: DDP over the model under torchrun (it averages the gradients), the model otherwise.
    # A frozen backbone leaves parameters without gradients, which DDP must be told to expect.
    net = distributed.wrap(model, world, device, find_unused=bool(head is not None and cfg.freeze_epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    augment = Augment(flip=float(cfg.fliplr or 0), translate=int(cfg.translate or 0),
                      resized_crop=bool(cfg.resized_crop), erase=cfg.erase)
    gen = torch.Generator().manual_seed(cfg.seed)

    # A private, writable copy in RAM (the cache is a read-only memory map); uint8 stays uint8.
    images = torch.from_numpy(np.require(train_split.images, requirements="CW")).to(device)
    labels = torch.from_numpy(np.array(train_split.labels, dtype=np.float32 if multilabel else np.int64)).to(device)
    class_weight = None
    if cfg.balance == "weights":
        class_weight = (balance.positive_weights(counts, len(labels)) if multilabel
                        else balance.loss_weights(counts)).to(device)
    mean, std = torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device)
    mine = distributed.part(world, batch)  # this rank's rows of every global batch
    steps_per_epoch = len(labels) // batch  # drop the ragged last batch: fixed shapes, no 1-sample BatchNorm
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(total_steps // 2, round(cfg.warmup_epochs * steps_per_epoch))
    ema = EMA(model, float(cfg.ema_decay or 0)) if cfg.ema else None
    eval_kw = {"amp": amp, "channels_last": bool(cfg.channels_last)}
    meta_base = {"model": cfg.model, "task": ds.task, "classes": classes, "preprocess": spec.to_dict(),
                 "config": cfg.to_dict(), "data": {"name": ds.name, "fingerprint": ds.fingerprint}}

    best_path, last_path = run_dir / "weights" / "best.safetensors", run_dir / "weights" / "last.safetensors"
    state_path = run_dir / "weights" / "last.state.pt"
    progress_state = {"epoch": 0, "step": 0, "best_score": -math.inf, "best_epoch": 0, "stale": 0,
                      "planned_epochs": cfg.epochs, "elapsed": 0.0}
    rows: list[dict[str, Any]] = []
    if cfg.resume:
        progress_state = _restore(state_path, ds.fingerprint, model, opt, ema, scaler, gen, device)
        rows = _read_csv(run_dir / "results.csv")[:progress_state["epoch"]]  # rows past the state were redone
        meta_base["pretrained"] = progress_state.get("pretrained")
        say(f"resuming {run_dir} after epoch {progress_state['epoch']} (step {progress_state['step']})"
            + ("; it had finished, so only its final evaluation runs again"
               if progress_state["epoch"] >= progress_state["planned_epochs"] else ""))
    elif transfer is not None:
        meta_base["pretrained"] = transfer.to_dict()
    step, planned = int(progress_state["step"]), int(progress_state["planned_epochs"])
    best_score, best_epoch, stale = float(progress_state["best_score"]), int(progress_state["best_epoch"]), int(
        progress_state["stale"])
    elapsed_before = float(progress_state["elapsed"])
    total_steps = steps_per_epoch * planned

    say(f"training {cfg.model} on {ds.name}: {len(labels)} train images, {len(classes)} classes"
        + (" (multi-label: sigmoid outputs, binary cross-entropy per class)" if multilabel else "") + ", "
        f"{spec.hw[0]}x{spec.hw[1]}x{spec.channels}, {planned} epochs on {device} "
        f"(amp {cfg.amp}, channels_last {cfg.channels_last}) -> {run_dir}")
    say(f"precision: {precision}")
    if world.active:
        say(f"data parallel: {world.size} processes ({device.type}), each {batch // world.size} of the global batch "
            f"of {batch}" + (", BatchNorm statistics over the global batch (sync_bn)" if cfg.sync_bn else
                             ", BatchNorm statistics per process (--sync-bn shares them)"))
    elif cfg.sync_bn:
        say("note: sync_bn shares BatchNorm statistics between processes; a single process has none to share")
    if cfg.mixup or cfg.cutmix:
        kinds = [f"{name} (Beta alpha {alpha:g})" for name, alpha in (("mixup", cfg.mixup), ("CutMix", cfg.cutmix))
                 if alpha]
        say(f"mixing: {' or '.join(kinds)}{', one or the other per batch' if len(kinds) > 1 else ''}; soft targets")
    epoch = int(progress_state["epoch"])
    stopped: str | None = None
    best_copy: nn.Module | None = None
    emit({"event": "start", "run_dir": str(run_dir), "epoch": epoch, "epochs": planned, "steps": steps_per_epoch,
          "batch": batch, "images": len(labels), "history": rows})
    try:
        while epoch < planned:
            epoch += 1
            frozen = epoch <= cfg.freeze_epochs
            if head is not None and cfg.freeze_epochs and epoch in (1, cfg.freeze_epochs + 1):
                say(f"epoch {epoch}: backbone {'frozen (head only)' if frozen else 'unfrozen'}")
            if head is not None:
                set_backbone_frozen(model, head, frozen)
            else:
                model.train()
            t_epoch = t_warm = time.perf_counter()
            order = (balance.balanced_order(labels, counts, gen) if cfg.balance == "sampler"
                     else torch.randperm(len(labels), generator=gen)).to(device)
            bar = progress(steps_per_epoch, f"epoch {epoch}/{planned}", unit="batch",
                           enabled=cfg.verbose and world.main, leave=False)
            loss_sum = torch.zeros((), device=device)
            for i in range(steps_per_epoch):
                idx = order[i * batch:(i + 1) * batch][mine]  # this rank's slice of the global batch
                drawn = augment.draw(batch, images.shape[-2], images.shape[-1], gen, device)[mine]
                x, y = normalize(augment.apply(images[idx], drawn), mean, std), labels[idx]
                mixing = mix_params(x.shape[-2], x.shape[-1], cfg.mixup, cfg.cutmix, gen)
                if mixing is not None:
                    x, y = mix(x, y, len(classes), mixing)  # y: soft targets
                x = x.contiguous(memory_format=memory_format)
                lr = lr_at(step, total_steps, warmup, float(cfg.lr or 0), cfg.schedule)
                loss_sum += train_step(net, x, y, opt, scaler, lr, amp, cfg.label_smoothing, cfg.grad_clip,
                                       class_weight, multilabel)
                if ema is not None:
                    ema.update(model)
                step += 1
                bar.update(1)
                if i + 1 == PLAN_WARMUP_STEPS:
                    t_warm = time.perf_counter()  # the first steps also compile kernels: not the pace
                if cfg.time and epoch == 1 and i + 1 == PLAN_AFTER_STEPS < steps_per_epoch and not cfg.resume:
                    # Plan from the first steps, not the first epoch: where one epoch takes most of the budget
                    # (fp32 on an AVX2 CPU), the schedule must already know that now, not after it.
                    pace = (time.perf_counter() - t_warm) / (PLAN_AFTER_STEPS - PLAN_WARMUP_STEPS)
                    planned = distributed.broadcast_int(world, _plan_early(
                        planned, steps_per_epoch, pace, t_epoch - t0, cfg.time * 3600, say), device)
                    total_steps = steps_per_epoch * planned
                    warmup = min(total_steps // 2, round(cfg.warmup_epochs * steps_per_epoch))
                    if ema is not None and not cfg.ema_decay:
                        ema.decay = ema_decay_for(total_steps)
                if i % 20 == 19:
                    rate = (i + 1) * batch / (time.perf_counter() - t_epoch)
                    bar.set_postfix_str(f"loss {float(loss_sum) / (i + 1):.4f} {rate:.0f} img/s")
                if i % EVENT_EVERY == EVENT_EVERY - 1 or i == steps_per_epoch - 1:
                    emit({"event": "progress", "epoch": epoch, "epochs": planned, "step": i + 1,
                          "steps": steps_per_epoch, "loss": float(loss_sum) / (i + 1),
                          "images_per_s": (i + 1) * batch / (time.perf_counter() - t_epoch)})
            bar.close()
            train_time = time.perf_counter() - t_epoch
            final_model = ema.module if ema is not None else model
            row: dict[str, Any] = {"epoch": epoch, "lr": round(lr, 6),
                                   "train_loss": round(distributed.mean_over_ranks(world, loss_sum)
                                                       / max(1, steps_per_epoch), 5)}
            report = None
            if eval_name is not None:
                split = ds.splits[eval_name]
                report = _epoch_report(world, final_model, split, classes, spec, device, eval_kw)
                row.update({f"{eval_name}_{key}": report[key] and round(report[key], 5) for key in
                            (EPOCH_FIGURES_MULTILABEL if multilabel else EPOCH_FIGURES)})
            elapsed = elapsed_before + time.perf_counter() - t0
            row.update({"train_seconds": round(train_time, 2), "elapsed_seconds": round(elapsed, 2)})
            rows.append(row)
            if world.main:
                _write_csv(run_dir / "results.csv", rows)
            try:
                emit({"event": "epoch", "epochs": planned, **row})
            except StopRun as stop:
                stopped = str(stop) or "stopped by the events callable"
            meta = {**meta_base, "epoch": epoch, "metrics": {eval_name: _brief(report)} if report else {}}
            save = checkpoint.save if world.main else (lambda *a: None)
            save(last_path, final_model, meta)
            if cfg.save_period and epoch % cfg.save_period == 0:
                save(run_dir / "weights" / f"epoch{epoch}.safetensors", final_model, meta)
            # Select only on a validation split; without one the final model is the result (never pick on test).
            improved = report is not None and eval_name == "val" and _score(report, cfg.select) > best_score
            if improved or eval_name != "val":
                best_score = _score(report, cfg.select) if report is not None else best_score
                best_epoch, stale = epoch, 0
                save(best_path, final_model, meta)
                if not world.main:  # its own copy: on another machine, rank 0's files may be out of reach
                    best_copy = copy.deepcopy(final_model)
            else:
                stale += 1
            if cfg.time:
                planned = distributed.broadcast_int(world, _fit_to_budget(epoch, planned, elapsed, cfg.time * 3600,
                                                                          say), device)
                total_steps = steps_per_epoch * planned
            # Last, so a run killed before this line redoes the epoch from the previous state, exactly.
            (_save_state if world.main else (lambda *a: None))(state_path, model, opt, ema, scaler, gen, {
                "epoch": epoch, "step": step, "best_score": best_score, "best_epoch": best_epoch, "stale": stale,
                "planned_epochs": planned, "elapsed": elapsed, "fingerprint": ds.fingerprint,
                "pretrained": meta_base.get("pretrained")})
            shown = "" if not report else (
                f" {eval_name} mAP {report['map']:.2%} micro-F1 {report['micro_f1']:.2%}" if multilabel else
                f" {eval_name} top-1 {report['top1']:.2%}" + (f" top-5 {report['top5']:.2%}" if report["top5"]
                                                              else "")) + f" loss {report['loss']:.4f}"
            say(f"epoch {epoch}/{planned}: train loss {row['train_loss']:.4f}{shown} "
                f"({len(labels) * 1.0 / train_time:.0f} img/s, {train_time:.1f}s)")
            if stopped:
                say(f"stopped after epoch {epoch}: {stopped}")
                break
            if cfg.patience and stale >= cfg.patience:
                say(f"early stop: no {cfg.select} improvement on val for {cfg.patience} epochs")
                break
    except KeyboardInterrupt:
        # Keep what the interrupted epoch learnt, for inspection; the resumable state stays at the last whole
        # epoch so that --resume continues exactly.
        if world.main:
            checkpoint.save(last_path, ema.module if ema is not None else model,
                            {**meta_base, "epoch": epoch, "interrupted": True, "metrics": {}})
        say(f"\ninterrupted in epoch {epoch}: its weights so far are in {last_path}; "
            f"`pigeon train --resume {run_dir}` continues after epoch {epoch - 1}")
        raise

    distributed.barrier(world)  # rank 0 has written best.safetensors
    best_model = best_copy if best_copy is not None else checkpoint.load_model(best_path)[0]
    best_model = best_model.to(device).to(memory_format=memory_format)
    results: dict[str, dict[str, Any] | None] = {"val": None, "test": None}
    final_logits = {name: _logits(world, best_model, ds.splits[name].images, spec, device, eval_kw)
                    for name in ("val", "test") if name in ds.splits}
    calibration, thresholds = None, None
    if multilabel:
        thresholds = _fit_thresholds(cfg, final_logits.get("val"), ds.splits.get("val"), classes, say)
    else:
        calibration = _calibrate(cfg, final_logits.get("val"), ds.splits.get("val"), say)
    temperature = calibration["temperature"] if calibration else 1.0
    for name, logits in final_logits.items():
        split = ds.splits[name]
        results[name] = rep = report_for(logits, split.labels, classes, temperature,
                                         thresholds=thresholds["values"] if thresholds else None)
        if name == eval_name and cfg.plots and world.main:
            _plots(run_dir, rows, rep, split, logits / temperature, classes, eval_name, best_model, spec, device)
    if calibration and results["test"] is not None:
        test_cal = results["test"]["calibration"]
        say(f"on test: ECE {test_cal['ece_uncalibrated']:.2%} -> {test_cal['ece']:.2%}, NLL "
            f"{test_cal['nll_uncalibrated']:.4f} -> {test_cal['nll']:.4f} with the val temperature")
    seconds = time.perf_counter() - t0
    summary = {"best_epoch": best_epoch, "epochs_run": len(rows), "seconds": round(seconds, 2),
               "selected_on": "val" if eval_name == "val" else "final epoch", "stopped": stopped,
               "processes": world.size,
               "val": _brief(results["val"]), "test": _brief(results["test"])}
    if hint:
        summary["hint"] = hint
    if results["test"] is None and results["val"] is not None and eval_name == "val":
        figure = (f"the val mAP {results['val']['map']:.2%}" if multilabel
                  else f"the val top-1 {results['val']['top1']:.2%}")
        chosen = "the best epoch and the thresholds were" if multilabel else "the best epoch was"
        where = ("rows with split test to the CSV" if Path(str(cfg.data)).suffix.lower() == ".csv"
                 else "a test/ folder (same class folders, images used for nothing else)")
        summary["caveat"] = (f"no test split: {figure} is optimistic, because {chosen} chosen on val and it is "
                             f"reported on val; add {where} for an unbiased figure")
    if world.main:
        write_json(run_dir / "summary.json", {**summary, "val_report": results["val"],
                                              "test_report": results["test"]})
        checkpoint.save(best_path, best_model, {**meta_base, "epoch": best_epoch, "calibration": calibration,
                                                **({"thresholds": thresholds} if thresholds else {}),
                                                "metrics": {k: _brief(v) for k, v in results.items() if v}})
    distributed.barrier(world)  # every rank returns once the run's files are final
    headline = results["test"] or results["val"]
    emit({"event": "done", "run_dir": str(run_dir), **summary})
    if headline is not None:
        say(format_report(headline))
    split_name = "test" if results["test"] else "val"
    if headline and multilabel:
        worst = headline["worst_class"]
        figures = (f"{split_name} mAP {headline['map']:.2%}, micro-F1 {headline['micro_f1']:.2%}, exact match "
                   f"{headline['exact_match']:.2%}, worst class {worst['class']}"
                   + (f" (AP {worst['ap']:.2%}); " if worst["ap"] is not None else "; "))
    elif headline:
        figures = (f"{split_name} top-1 {headline['top1']:.2%}, balanced accuracy {headline['balanced_accuracy']:.2%}, "
                   f"worst class {headline['worst_class']['class']} (recall {headline['worst_class']['recall']:.2%}); ")
    else:
        figures = ""
    say(f"done in {seconds:.1f}s: best epoch {best_epoch} ({summary['selected_on']}); {figures}weights in {best_path}")
    if "caveat" in summary:
        say(f"note: {summary['caveat']}")
    return TrainResult(run_dir=run_dir, best=best_path, last=last_path, config=cfg, val=results["val"],
                       test=results["test"], epochs=len(rows), seconds=seconds)


def _logits(world: distributed.World, model: nn.Module, images: Any, spec: Any, device: torch.device,
            eval_kw: dict[str, Any]) -> torch.Tensor:
    """Logits of every image: in a world of several, each rank computes its part and all gather the rest."""
    mine = distributed.part(world, len(images))
    return distributed.gather_rows(world, logits_for(model, images[mine], spec, device, **eval_kw), len(images))


def _epoch_report(world: distributed.World, model: nn.Module, split: Any, classes: list[str], spec: Any,
                  device: torch.device, eval_kw: dict[str, Any]) -> dict[str, Any]:
    """The report of an epoch's model on the evaluated split, from which the best epoch is chosen."""
    return report_for(_logits(world, model, split.images, spec, device, eval_kw), split.labels, classes)


def _brief(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    brief = {k: report[k] for k in ("n", "top1", "top5", "macro_f1", "balanced_accuracy", "map", "micro_f1",
                                    "exact_match", "hamming_accuracy", "worst_class", "loss") if k in report}
    if "calibration" in report:
        brief["ece"] = report["calibration"]["ece"]
    return brief


def _fit_thresholds(cfg: TrainConfig, val_logits: torch.Tensor | None, val: Any, classes: list[str],
                    say: Any) -> dict[str, Any]:
    """Per-class decision thresholds of a multi-label model: each class's best F1 on the val split (never test);
    0.5 for a class without a positive there, or for all without val or with --no-calibrate."""
    from pigeon.metrics import best_f1_thresholds

    fitted = cfg.calibrate and val_logits is not None and val is not None
    if not fitted:
        say("thresholds: 0.5 for every class (" + ("--no-calibrate" if not cfg.calibrate else
            "no validation split to fit them on, never test; keep one with --val-fraction") + ")")
        return {"values": [0.5] * len(classes), "method": "fixed 0.5", "fitted_on": None, "images": 0}
    values = best_f1_thresholds(torch.sigmoid(val_logits).numpy(), np.asarray(val.labels))
    no_positive = [c for c, n in zip(classes, np.asarray(val.labels).sum(0)) if n == 0]
    say(f"thresholds: per class, the best F1 on val ({len(val)} images), from {values.min():.3f} to "
        f"{values.max():.3f}" + (f"; 0.5 for {len(no_positive)} class(es) with no val positive" if no_positive else ""))
    return {"values": [round(float(v), 6) for v in values], "method": "best F1 per class on val",
            "fitted_on": "val", "images": len(val)}


EPOCH_FIGURES = ("loss", "top1", "top5", "macro_f1")  # results.csv's per-epoch columns of the evaluated split
EPOCH_FIGURES_MULTILABEL = ("loss", "map", "micro_f1", "macro_f1")


def _calibrate(cfg: TrainConfig, val_logits: torch.Tensor | None, val: Any, say: Any) -> dict[str, Any] | None:
    """Fit the softmax temperature on the val split (never on test), or say why the run stays uncalibrated."""
    from pigeon.calibration import ece, fit_temperature, nll, why_not_calibrate

    if not cfg.calibrate:
        return None
    if val_logits is None or val is None:
        say("not calibrated: there is no validation split to fit a temperature on (never test); keep one "
            "(--val-fraction, or a val/ folder) for calibrated confidences")
        return None
    targets = torch.as_tensor(np.asarray(val.labels, dtype=np.int64))
    reason = why_not_calibrate(val_logits, targets)
    if reason:
        say(f"not calibrated: {reason}; confidences are the plain softmax (temperature 1)")
        return None
    temperature = fit_temperature(val_logits, targets)
    before, after = ece(val_logits.softmax(1), targets), ece((val_logits / temperature).softmax(1), targets)
    say(f"calibrated: temperature {temperature:.3f} fitted on val ({len(targets)} images): ECE {before:.2%} -> "
        f"{after:.2%}, NLL {nll(val_logits, targets):.4f} -> {nll(val_logits, targets, temperature):.4f}")
    return {"temperature": temperature, "method": "temperature scaling, NLL on val", "fitted_on": "val",
            "images": len(targets)}


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    def value(key: str, text: str | None) -> Any:
        if text in ("", None):
            return None
        return int(text) if key == "epoch" else float(text)

    with open(path, newline="") as fh:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[-1]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None,
                scaler: torch.amp.GradScaler, gen: torch.Generator, progress_state: dict[str, Any]) -> None:
    """Everything needed to continue training exactly; plain tensors and numbers, loadable with weights_only.

    The data order and augmentation both draw from `gen`, so its state at an epoch's end fixes every later
    epoch; the global RNG covers dropout-style layers of timm/torchvision models.
    """
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
             "ema": ema.state_dict() if ema is not None else None, "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state(), **progress_state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _restore(path: Path, fingerprint: str, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None,
             scaler: torch.amp.GradScaler, gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Load a run's state saved by _save_state into the freshly built objects; return its progress."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable for any reason: the message is the same
        raise CheckpointError(f"{path}: cannot read the run's saved state ({type(err).__name__}); it is damaged. "
                              "Start a new run, with --weights pointing at this run's last.safetensors") from None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{path.parent.parent}: the data changed since this run started, so resuming would not "
                          "continue the same run. Start a new run (--weights can start it from this one's weights)")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    gen.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    return state


PLAN_WARMUP_STEPS, PLAN_AFTER_STEPS = 10, 30  # a --time budget plans from steps 11-30 of the first epoch


def _plan_early(planned: int, steps_per_epoch: int, step_seconds: float, setup_seconds: float, budget: float,
                say: Any) -> int:
    """Epochs that fit the budget at this step pace, at least one: the first plan of a --time run.

    Each epoch is counted 10% longer than its steps, for its evaluation and checkpoints.
    """
    per_epoch = 1.1 * step_seconds * steps_per_epoch
    fits = max(1, int((budget - setup_seconds) / per_epoch))
    if fits < planned:
        say(f"time budget {budget / 3600:g} h: {fits} of {planned} planned epochs fit at about {per_epoch:.0f}s "
            f"per epoch (timed over steps {PLAN_WARMUP_STEPS + 1}-{PLAN_AFTER_STEPS}); the schedule ends at epoch "
            f"{fits}")
        return fits
    return planned


def _fit_to_budget(epoch: int, planned: int, elapsed: float, budget: float, say: Any) -> int:
    """Epochs that fit the time budget at the pace so far, never more than planned and at least `epoch`.

    Shortening the plan (rather than just stopping) lets the learning-rate schedule still end at zero.
    """
    fits = max(epoch, int(budget / (elapsed / epoch)))
    if fits < planned:
        say(f"time budget {budget / 3600:g} h: {fits} of {planned} planned epochs fit at "
            f"{elapsed / epoch:.1f}s per epoch; the schedule now ends at epoch {fits}")
        return fits
    return planned


def _plots(run_dir: Path, rows: list[dict[str, Any]], report: dict[str, Any], split: Any, logits: torch.Tensor,
           classes: list[str], split_name: str, model: nn.Module | None = None, spec: Any = None,
           device: torch.device | None = None) -> None:
    from pigeon import plots
    from pigeon.engine.saliency import misclassified_overlays

    plots.plot_curves(rows, run_dir / "curves.png", split=split_name)
    if report.get("task") == "multilabel":
        return  # no confusion matrix, softmax calibration or one predicted class per image to draw
    plots.plot_confusion(np.asarray(report["confusion"]), classes, run_dir / "confusion_matrix.png")
    if "calibration" in report:
        plots.plot_calibration(report["calibration"], run_dir / "calibration.png", split_name)
    probs = logits.softmax(1)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(split.labels), size=min(25, len(split.labels)), replace=False))
    conf, pred = probs[pick].max(1)
    # The grid's extra row: where the model looked when it got an image wrong (Grad-CAM of its prediction).
    wrong = [] if model is None else misclassified_overlays(
        model, split.images, np.asarray(split.labels), probs.argmax(1).numpy(), classes, spec, device,
        limit=math.ceil(math.sqrt(len(pick))))
    plots.plot_prediction_grid(for_display(split.images[pick]), [classes[i] for i in split.labels[pick]],
                               [classes[i] for i in pred.tolist()], conf.tolist(),
                               run_dir / f"{split_name}_predictions.png", overlay_row=wrong)
