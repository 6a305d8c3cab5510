"""Label-error candidates: images whose label a cross-validated model confidently disagrees with.

Each image is predicted by a model that never saw it (k-fold: train on k-1 folds, predict the held-out one),
so a mislabelled image cannot have been memorised under its wrong label. The loop is pigeon's own training
step on uint8 arrays held in memory; it writes no run folder, checkpoint or cache entry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pigeon.data.augment import Augment
from pigeon.data.dataset import channel_stats
from pigeon.data.preprocess import Preprocess, normalize
from pigeon.engine.device import amp_dtype
from pigeon.engine.evaluate import logits_for
from pigeon.engine.schedule import lr_at
from pigeon.engine.train import param_groups, train_step
from pigeon.models import create_model

LABEL_SMOOTHING = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per image, each class dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    ids = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        ids[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)  # classes start where the last one stopped, so small classes do not all land in fold 0
    return ids


def fit(images: np.ndarray, labels: np.ndarray, num_classes: int, spec: Preprocess, *, model_name: str,
        epochs: int, batch: int, seed: int, device: torch.device) -> nn.Module:
    """Train a fresh model on uint8 images [N, C, S, S]: SGD, one-cycle schedule, light shifts as augmentation."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=num_classes, in_chans=spec.channels, imgsz=spec.imgsz)
    model = model.to(device).to(memory_format=torch.channels_last)
    amp = amp_dtype(device, "auto")
    batch = min(batch, len(labels))
    steps_per_epoch = len(labels) // batch
    total = steps_per_epoch * epochs
    base_lr = 0.2 * batch / 256
    opt = torch.optim.SGD(param_groups(model, WEIGHT_DECAY), lr=base_lr, momentum=MOMENTUM, nesterov=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    # No flips: they would turn a 2 into a mirrored 2, which is no digit at all; shifts are safe for any data.
    augment = Augment(flip=0.0, translate=max(1, spec.imgsz // 10))
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    mean, std = torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device)
    model.train()
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(labels), generator=gen).to(device)
        idx = order[(step % steps_per_epoch) * batch:(step % steps_per_epoch + 1) * batch]
        x = normalize(augment(x_all[idx], gen), mean, std).contiguous(memory_format=torch.channels_last)
        lr = lr_at(step, total, min(total // 2, steps_per_epoch), base_lr)
        train_step(model, x, y_all[idx], opt, scaler, lr, amp, LABEL_SMOOTHING, 0.0)
    return model


def out_of_fold_probs(images: np.ndarray, labels: np.ndarray, num_classes: int, *, model_name: str, folds: int,
                      epochs: int, batch: int, seed: int, device: torch.device,
                      tick: Callable[[], None] = lambda: None) -> np.ndarray:
    """Class probabilities [N, K] for every image, each from the model trained on the other folds."""
    ids = fold_ids(labels, folds, seed)
    probs = np.zeros((len(labels), num_classes), dtype=np.float32)
    amp = amp_dtype(device, "auto")
    for fold in range(folds):
        held = np.flatnonzero(ids == fold)
        train = np.flatnonzero(ids != fold)
        mean, std = channel_stats(images[train])
        spec = Preprocess(imgsz=images.shape[-1], channels=images.shape[1], mean=mean, std=std)
        # Tiny datasets get smaller batches, so that each fold still takes a useful number of steps.
        fold_batch = max(2, min(batch, len(train) // 10))
        model = fit(images[train], labels[train], num_classes, spec, model_name=model_name, epochs=epochs,
                    batch=fold_batch, seed=seed + fold, device=device)
        logits = logits_for(model, images[held], spec, device, amp=amp, channels_last=True)
        probs[held] = logits.softmax(1).numpy()
        tick()
    return probs


def candidates(probs: np.ndarray, labels: np.ndarray, confidence: float) -> np.ndarray:
    """Rows where the model's top class is not the label, at `confidence` or more; least-believed label first."""
    top = probs.argmax(1)
    rows = np.flatnonzero((top != labels) & (probs.max(1) >= confidence))
    given = probs[rows, labels[rows]]
    return rows[np.lexsort((rows, given))]
