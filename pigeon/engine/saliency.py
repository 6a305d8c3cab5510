"""Why did the model decide that? Class activation maps by Grad-CAM and Grad-CAM++, for any convolutional model.

Grad-CAM (Selvaraju et al., 2017) weights each channel k of a convolutional feature map A by the spatial mean
of the gradient of the class score y_c (the logit) with respect to it, and keeps the positive part of the
weighted sum: relu(sum_k mean_ij(dy_c/dA_kij) * A_k). Grad-CAM++ (Chattopadhay et al., 2018) weights each
location's positive gradient by alpha = g^2 / (2 g^2 + sum_ij(A) g^3), the closed form that follows from an
exponential of the score, so several separate regions of one class all show.

The layer is found from the model: the last module, in execution order, whose output is a 4-D map with more
than one spatial position (the last convolutional stage; for pigeon's models `stages`, for ResNets `layer4`),
or any module named with `layer=` (`--layer`; see model.named_modules()).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pigeon.data.preprocess import Preprocess, normalize
from pigeon.errors import ConfigError, DatasetError, did_you_mean

METHODS = ("gradcam", "gradcam++")


def find_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the module whose output is the model's last spatial (4-D, more than 1x1) feature map.

    Several modules can return the very same tensor (a stage, its last block, that block's activation);
    the shortest name, the outermost of them, is the one reported.
    """
    seen: list[tuple[str, torch.Tensor]] = []

    def record(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1:
                seen.append((name, output))
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ConfigError(f"{type(model).__name__} has no convolutional feature map (a 4-D output larger than "
                          "1x1) to explain; Grad-CAM needs a CNN. Name a layer with --layer if one exists")
    last = seen[-1][1]
    names = [n for n, out in seen if out is last]
    return min(names, key=lambda n: (n.count("."), len(n)))


def _module(model: nn.Module, layer: str) -> nn.Module:
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        raise ConfigError(f"the model has no layer {layer!r}{did_you_mean(layer, names)}; give one of its "
                          f"module names, e.g. {', '.join(names[-5:])}")
    return model.get_submodule(layer)


def cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None, layer: str | None = None,
        method: str = "gradcam") -> tuple[np.ndarray, torch.Tensor, str]:
    """Class activation maps for a normalized float batch x [N, C, H, W].

    Args:
        model: any nn.Module mapping images to logits; it is put in eval mode.
        target: class index per image (default: the predicted class).
        layer: module name to explain (default: find_layer).
        method: "gradcam" or "gradcam++".
    Returns:
        (maps float32 [N, H, W] in [0, 1] at the input's resolution, logits [N, K], the layer's name).
    """
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not valid; choose one of {', '.join(METHODS)}"
                          f"{did_you_mean(method, METHODS)}")
    model.eval()
    layer = layer or find_layer(model, x)
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ConfigError(f"layer {layer!r} returns {type(output).__name__} "
                              f"{getattr(output, 'shape', '')}, not a 4-D feature map; choose a convolutional one")
        captured.append(output)

    handle = _module(model, layer).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # so the map has a graph even with frozen weights
            logits = model(x)
            feats = captured[-1]
            if target is None:
                target = logits.argmax(1)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            # Samples are independent in eval mode, so one backward of the sum gives each its own gradient.
            grads = torch.autograd.grad(score, feats)[0]
    finally:
        handle.remove()
    a, g = feats.detach().float(), grads.float()
    if method == "gradcam":
        weights = g.mean(dim=(2, 3), keepdim=True)
    else:
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    maps = (weights * a).sum(1, keepdim=True).clamp(min=0)
    maps = nn.functional.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(1).view(-1, 1, 1)
    maps = torch.where(peak > 0, maps / peak.clamp(min=1e-12), torch.zeros_like(maps))
    return maps.cpu().numpy().astype(np.float32), logits.detach().float().cpu(), layer


def maps_for(model: nn.Module, images: np.ndarray, spec: Preprocess, device: torch.device,
             target: torch.Tensor | None = None, layer: str | None = None, method: str = "gradcam",
             batch: int = 32) -> tuple[np.ndarray, torch.Tensor, str]:
    """cam() over uint8 images [N, C, H, W] with the model's preprocessing, in batches."""
    mean, std = torch.tensor(spec.mean, device=device), torch.tensor(spec.std, device=device)
    maps, logits = [], []
    for start in range(0, len(images), batch):
        chunk = torch.from_numpy(np.require(images[start:start + batch], requirements="CW")).to(device)
        t = None if target is None else target[start:start + batch]
        m, lg, layer = cam(model, normalize(chunk, mean, std), t, layer, method)
        maps.append(m)
        logits.append(lg)
    return np.concatenate(maps), torch.cat(logits), str(layer)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, min_side: int = 128) -> np.ndarray:
    """uint8 CHW image + [H, W] map in [0, 1] -> uint8 HWC RGB blend with the 'jet' colour map, upscaled
    (nearest) to at least `min_side` pixels so that small images stay visible."""
    from matplotlib import colormaps

    from pigeon.data.rasters import for_display

    image = for_display(image)  # a raster: its first three bands, in 8 bits
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    rgb = rgb.transpose(1, 2, 0).astype(np.float32)
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255.0
    blend = ((1 - alpha) * rgb + alpha * colour).round().clip(0, 255).astype(np.uint8)
    scale = max(1, -(-min_side // max(blend.shape[:2])))
    return blend.repeat(scale, axis=0).repeat(scale, axis=1)


@dataclass(frozen=True)
class ExplainResult:
    dir: Path | None
    method: str
    layer: str
    maps: np.ndarray  # float32 [N, H, W] in [0, 1], one per readable image, in input order
    items: list[dict[str, Any]]  # per input: source, label, confidence, target, png, npy (or error)


def _target_index(target: str | int | None, classes: tuple[str, ...]) -> int | None:
    if target is None:
        return None
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    if isinstance(target, int) or str(target).isdigit():
        index = int(target)
        if 0 <= index < len(classes):
            return index
    raise ConfigError(f"class {target!r} is not one of the model's classes {list(classes)}"
                      f"{did_you_mean(str(target), classes)}")


def _file_stem(source: str, taken: set[str]) -> str:
    stem = Path(source).stem if not source.startswith("<") else "image"
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem) or "image"
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}-{i}", i + 1
    taken.add(name)
    return name


def explain(clf: Any, source: Any, method: str = "gradcam", target: str | int | None = None,
            layer: str | None = None, out: str | os.PathLike[str] | None = None, batch: int = 32,
            origin: str = "model", save: bool = True, verbose: bool = True) -> ExplainResult:
    """Heat maps of the regions behind the predicted (or `target`) class, for a loaded Classifier.

    Args:
        clf: a loaded pigeon Classifier (pigeon.explain loads a checkpoint path for you).
        source: files, folders, globs, PIL images or arrays, as for predict().
        method: "gradcam" or "gradcam++".
        target: a class name or index to explain instead of each image's prediction.
        layer: the module to explain (default: the last convolutional stage, found from the model).
        out: folder for <image>.png overlays, <image>.npy maps and explain.json (default runs/explain/<run>).
        save: write the files (False: only return the maps).
    Returns:
        ExplainResult with the folder, method, layer, maps and one item per input image.
    """
    from pigeon.engine.predict import _items, _to_uint8
    from pigeon.errors import describe

    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not valid; choose one of {', '.join(METHODS)}"
                          f"{did_you_mean(method, METHODS)}")
    index = _target_index(target, clf.classes)
    items, _ = _items(source)
    arrays, records = [], []
    for name, item in items:
        try:
            arrays.append(_to_uint8(item, clf.preprocess))
            records.append({"source": name})
        except Exception as err:  # noqa: BLE001 - one bad image is one error entry, as in predict
            records.append({"source": name, "error": describe(err)})
    if not arrays:
        raise DatasetError(f"none of the {len(items)} image(s) could be read: {records[0].get('error')}")
    images = np.stack(arrays)
    wanted = None if index is None else torch.full((len(images),), index, dtype=torch.int64)
    maps, logits, layer = maps_for(clf.model, images, clf.preprocess, clf.device, wanted, layer, method, batch)
    probs = logits.softmax(1)
    out_dir = None
    if save:
        from pigeon.engine.train import make_run_dir
        from pigeon.io import write_json

        # runs/train/<name>/weights/best.safetensors explains into runs/explain/<name>
        run_name = Path(origin).parent.parent.name if origin != "model" else "model"
        out_dir = Path(out) if out else make_run_dir("runs/explain", run_name or "model", False)
        out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    good = iter(range(len(images)))
    for rec in records:
        if "error" in rec:
            continue
        i = next(good)
        pred = int(probs[i].argmax())
        chosen = pred if index is None else index
        rec.update({"label": clf.classes[pred], "confidence": round(float(probs[i, pred]), 6),
                    "target": clf.classes[chosen], "target_prob": round(float(probs[i, chosen]), 6)})
        if out_dir is not None:
            from PIL import Image

            stem = _file_stem(rec["source"], taken)
            Image.fromarray(overlay(images[i], maps[i])).save(out_dir / f"{stem}.png")
            np.save(out_dir / f"{stem}.npy", maps[i], allow_pickle=False)
            rec.update({"png": f"{stem}.png", "npy": f"{stem}.npy"})
    if out_dir is not None:
        write_json(out_dir / "explain.json", {"method": method, "layer": layer, "model": origin, "items": records})
    if verbose:
        for rec in records:
            print(f"{rec['source']}: " + (f"ERROR {rec['error']}" if "error" in rec else
                  f"{rec['label']} ({rec['confidence']:.1%}); map of {rec['target']}"
                  + (f" -> {out_dir / rec['png']}" if "png" in rec else "")))
        print(f"{method} on layer {layer!r}" + (f"; written to {out_dir}" if out_dir else ""))
    return ExplainResult(dir=out_dir, method=method, layer=layer, maps=maps, items=records)


def misclassified_overlays(model: nn.Module, images: np.ndarray, labels: np.ndarray, preds: np.ndarray,
                           classes: list[str], spec: Preprocess, device: torch.device,
                           limit: int) -> list[tuple[np.ndarray, str]]:
    """Grad-CAM overlays of the predicted class for up to `limit` misclassified images, with titles; [] when
    none is wrong or the model has no convolutional map to explain."""
    wrong = np.flatnonzero(np.asarray(preds) != np.asarray(labels))[:limit]
    if len(wrong) == 0:
        return []
    was_training = model.training
    try:
        maps, _, _ = maps_for(model, np.asarray(images[wrong]), spec, device, torch.as_tensor(preds[wrong]))
    except ConfigError:
        return []
    finally:
        model.train(was_training)
    return [(overlay(np.asarray(images[j]), maps[k], min_side=64),
             f"Grad-CAM: {classes[int(preds[j])]}\ntrue: {classes[int(labels[j])]}") for k, j in enumerate(wrong)]


