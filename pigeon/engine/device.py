"""Device, precision and memory-format choices, made once per run."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from pigeon.errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    return device


def cpu_has_bf16() -> bool:
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for `mode` (auto, off, bf16, fp16) on `device`, or None for full precision."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type == "cpu":
            raise ConfigError("amp=fp16 is for GPUs; on the CPU use amp=bf16 or amp=off")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On the CPU bf16 only pays where the processor has native bf16 instructions (AVX512-BF16/AMX).
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
