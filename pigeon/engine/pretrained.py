"""Starting weights for fine-tuning: read them without running code, then fit them to the new model.

Sources (`--weights`):
  runs/.../best.safetensors   a pigeon checkpoint: weights, class names and preprocessing, digest-verified
  any.safetensors             a plain safetensors state dict (timm, Hugging Face, torchvision exports)
  any.pth / .pt / .bin        a PyTorch state dict, read with torch.load(weights_only=True) only
  timm                        the timm model's default pretrained weights (from the Hugging Face hub)
  hf-hub:org/repo[/file]      a file from the Hugging Face hub (default model.safetensors)

Fitting is all-or-nothing: every tensor outside the classifier head must match the model by name and shape
(first-layer filters are converted between 1 and 3 channels), otherwise nothing is loaded and the error
names the tensors. The head is kept fresh except for rows whose class names the source shares.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from pigeon.config import size_text
from pigeon.errors import CheckpointError, ConfigError
from pigeon.models.surgery import adapt_conv_weight, classifier_name, first_conv_name
from pigeon.offline import offline as pigeon_offline

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "state", "ema", "net")
HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Weights:
    """Tensors read from a source, and what the source says about itself (pigeon checkpoints only)."""

    source: str
    state: dict[str, torch.Tensor] = field(repr=False)
    model: str | None = None  # the architecture name a pigeon checkpoint was trained as
    classes: tuple[str, ...] | None = None
    preprocess: dict[str, Any] | None = None


def read_weights(source: str, model_name: str) -> Weights:
    """Read `source` (see module docstring) for a model to be built as `model_name`."""
    if source == "timm":
        return _read_file(_timm_default(model_name), label=f"timm default weights of {model_name}")
    if source.startswith("hf-hub:"):
        return _read_file(_hub_file(source[len("hf-hub:"):], option=f"--weights {source}"), label=source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"--weights {source}: no such file. Give a .safetensors/.pth file, a pigeon "
                              "checkpoint (runs/train/<name>/weights/best.safetensors), 'timm' or hf-hub:org/repo")
    return _read_file(path, label=str(path))


def _read_file(path: Path, label: str) -> Weights:
    if path.suffix == ".safetensors":
        return _read_safetensors(path, label)
    try:
        with warnings.catch_warnings():  # torch warns about some pickle protocols; the outcome is what counts
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the callable the file wanted to run; its advice (weights_only=False) is exactly what not
        # to do with a file you do not trust, so only the name is passed on.
        wanted = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise CheckpointError(
            f"{label}: refused; loading it would run code stored in the file"
            f"{f' ({wanted.group(1)})' if wanted else ''}. pigeon never executes code from a weights file. On a "
            "machine you trust, save only the tensors: torch.save(model.state_dict(), 'weights.pth') or "
            "safetensors.torch.save_file(...)") from None
    except Exception as err:  # noqa: BLE001 - a damaged file makes torch raise almost anything
        raise CheckpointError(f"{label}: not a readable PyTorch file ({type(err).__name__}); it may be empty, "
                              "truncated or not a weights file. Download or save it again") from None
    return Weights(source=label, state=_state_dict_in(obj, label))


def _read_safetensors(path: Path, label: str) -> Weights:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from pigeon.engine import checkpoint

    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{label}: not a readable safetensors file ({err}); it may be truncated. "
                              "Download or save it again") from None
    if "pigeon" in header:  # our own checkpoint: verified against its digest, and it knows its classes
        state, meta = checkpoint.read(path)
        classes = meta.get("classes")
        return Weights(source=label, state=state, model=meta.get("model"),
                       classes=tuple(classes) if isinstance(classes, list) else None,
                       preprocess=meta.get("preprocess"))
    return Weights(source=label, state=load_file(str(path)))


def _state_dict_in(obj: Any, label: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, also when saved wrapped ({"state_dict": ...}) or from DataParallel."""
    def is_state(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                         for k, v in d.items())

    if not is_state(obj) and isinstance(obj, dict):
        obj = next((obj[k] for k in STATE_DICT_KEYS if is_state(obj.get(k))), obj)
    if not is_state(obj):
        raise CheckpointError(f"{label}: holds no state dict (a mapping of names to tensors); save one with "
                              "torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _timm_default(model_name: str) -> Path:
    if not model_name.startswith("timm:"):
        raise ConfigError(f"--weights timm gives timm's pretrained weights, so it needs a timm:<name> model, not "
                          f"{model_name!r}; or pass a weights file")
    import timm.models

    arch = model_name[len("timm:"):]
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise CheckpointError(f"timm has no Hugging Face hub weights for {arch}; download its weights yourself "
                              "and pass the file with --weights")
    return _hub_file(hub_id, option="--weights timm")


def _hub_file(spec: str, option: str) -> Path:
    """A file from the Hugging Face hub: from the local cache if there, else downloaded; offline fails fast."""
    parts = spec.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"hf-hub:{spec} is not a hub id; write hf-hub:org/repo or hf-hub:org/repo/file.safetensors")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "model.safetensors"
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("hub weights need huggingface_hub: pip install 'pigeon[timm]'") from None
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # not in the cache (the library's exception types vary across versions)
        pass
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if pigeon_offline():  # not even the reachability probe below
        raise CheckpointError(
            f"{option}: hf-hub:{repo}/{filename} is not in the local Hugging Face cache and PIGEON_OFFLINE=1 forbids "
            f"downloading it. Fix: on a machine with internet run `huggingface-cli download {repo} {filename}` and "
            "copy the cache folder here (HF_HUB_CACHE, default ~/.cache/huggingface/hub), or pass the downloaded "
            "file's path with --weights")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    # Behind a proxy a direct connection proves nothing; huggingface_hub's own timeouts apply instead.
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if offline or (not proxied and not _reachable(endpoint)):
        why = "HF_HUB_OFFLINE is set" if offline else f"{endpoint} cannot be reached"
        raise CheckpointError(
            f"{option}: hf-hub:{repo}/{filename} is not in the local cache and {why}. On a machine with internet run "
            f"`huggingface-cli download {repo} {filename}` (or download the file by hand), then pass its path "
            "with --weights")
    try:
        # The endpoint is passed, not left to the library: huggingface_hub reads HF_ENDPOINT once, at import, and
        # would otherwise fetch from another host than the one just probed (and than the user set since).
        return Path(huggingface_hub.hf_hub_download(repo, filename, cache_dir=cache_dir, etag_timeout=HUB_TIMEOUT_S,
                                                    endpoint=endpoint))
    except Exception as err:
        raise CheckpointError(f"hf-hub:{repo}/{filename}: download failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); check the repo and file name, or download it "
                              "by hand and pass its path with --weights") from None


def _reachable(url: str) -> bool:
    """A TCP connection within a few seconds: the difference between a fast refusal and a long hang."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=HUB_TIMEOUT_S):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Transfer:
    """What fitting the weights did, for the run log and the checkpoint metadata."""

    source: str
    tensors: int
    head: str
    carried_classes: tuple[str, ...] = ()
    channels: str | None = None
    resampled: str | None = None  # a vision transformer's position embeddings, fitted to --imgsz

    def describe(self) -> str:
        text = f"loaded {self.tensors} tensors from {self.source}; head: {self.head}"
        return (text + (f"; first layer: {self.channels}" if self.channels else "")
                + (f"; {self.resampled}" if self.resampled else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "tensors": self.tensors, "head": self.head,
                "carried_classes": list(self.carried_classes), "channels": self.channels,
                "resampled": self.resampled}


def fit_weights(model: nn.Module, weights: Weights, classes: list[str], model_name: str) -> Transfer:
    """Load `weights` into `model` (built for `classes`) or raise without touching the model."""
    target = model.state_dict()
    head = classifier_name(model) + "."
    conv = first_conv_name(model) + ".weight"
    new: dict[str, torch.Tensor] = {}
    missing, mismatched, channels, resampled = [], [], None, None
    for key, want in target.items():
        if key.startswith(head):
            continue
        got = weights.state.get(key)
        if got is None:
            if not key.endswith("num_batches_tracked"):  # a counter some exporters drop; harmless
                missing.append(key)
            continue
        if key == conv and got.ndim == 4 and got.shape[1] != want.shape[1]:
            how = {(3, 1): "summed", (1, 3): "repeated"}.get((got.shape[1], want.shape[1]),
                                                             "first bands' filters kept, new ones the mean")
            channels = f"{got.shape[1]} -> {want.shape[1]} channels ({how})"
            got = adapt_conv_weight(got.float(), want.shape[1])
        if key.endswith("pos_embed") and got.ndim == 3 and want.ndim == 3 and got.shape[0::2] == want.shape[0::2]:
            got, resampled = _resample_pos_embed(model, got, want.shape[1]), f"{key} resampled to the new input size"
        if got.shape != want.shape:
            mismatched.append(f"{key} {tuple(got.shape)} vs {tuple(want.shape)}")
            continue
        new[key] = got.to(want.dtype)
    unexpected = sorted(k for k in weights.state if k not in target)
    if missing or mismatched or unexpected:
        raise CheckpointError(_mismatch_message(weights, model_name, missing, mismatched, unexpected))

    head_text, carried = _fit_head(target, weights, head, classes, new)
    model.load_state_dict({**target, **new}, strict=True)
    return Transfer(source=weights.source, tensors=len(new), head=head_text, carried_classes=carried,
                    channels=channels, resampled=resampled)


def _resample_pos_embed(model: nn.Module, posemb: torch.Tensor, tokens: int) -> torch.Tensor:
    """A vision transformer's position embeddings, interpolated to another patch grid (another --imgsz)."""
    from timm.layers import resample_abs_pos_embed

    prefix = int(getattr(model, "num_prefix_tokens", 0))
    side = round((tokens - prefix) ** 0.5)
    if side * side != tokens - prefix:
        return posemb  # not a square grid: left for the shape check to report
    return resample_abs_pos_embed(posemb.float(), new_size=[side, side], num_prefix_tokens=prefix)


def _fit_head(target: dict[str, torch.Tensor], weights: Weights, head: str, classes: list[str],
              new: dict[str, torch.Tensor]) -> tuple[str, tuple[str, ...]]:
    w_key, b_key = head + "weight", head + "bias"
    src_w, src_b = weights.state.get(w_key), weights.state.get(b_key)
    fresh = f"new, {len(classes)} classes"
    if src_w is None or weights.classes is None:
        return fresh + " (the source does not name its classes)", ()
    if src_w.ndim != 2 or src_w.shape[1] != target[w_key].shape[1] or src_w.shape[0] != len(weights.classes):
        return fresh + " (the source head has another shape)", ()
    shared = [c for c in classes if c in weights.classes]
    if not shared:
        return fresh + " (no class names in common with the source)", ()
    w, b = target[w_key].clone(), target[b_key].clone() if b_key in target else None
    for c in shared:
        w[classes.index(c)] = src_w[weights.classes.index(c)]
        if b is not None and src_b is not None:
            b[classes.index(c)] = src_b[weights.classes.index(c)]
    new[w_key] = w
    if b is not None:
        new[b_key] = b
    return f"carried {len(shared)} of {len(classes)} classes over by name, the rest new", tuple(shared)


def _mismatch_message(weights: Weights, model_name: str, missing: list[str], mismatched: list[str],
                      unexpected: list[str]) -> str:
    def some(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")

    parts = [f"{label} {len(items)}: {some(items)}" for label, items in
             (("missing", missing), ("shape differs", mismatched), ("unexpected", unexpected)) if items]
    if weights.model and weights.model != model_name:
        fix = f"the weights were trained as {weights.model}: use --model {weights.model}"
    elif weights.model and weights.preprocess:
        fix = (f"pigeon's layout depends on the input size: use --imgsz {size_text(weights.preprocess['imgsz'])}, the "
               "size these weights were trained at")
    else:
        fix = "use the --model these weights were saved from"
    return (f"{weights.source} does not fit {model_name} ({'; '.join(parts)}); nothing was loaded. Fix: {fix}")
