"""Device, precision and memory-format choices, made once per run."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
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
    if "," in name:
        raise ConfigError(f"device={name!r} lists several devices: `pigeon train --device {name}` starts one "
                          "process per GPU through torchrun; from Python, run your script under torchrun "
                          "(`torchrun --nproc-per-node N script.py`), where each process takes its own GPU")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    return device


# oneDNN's ISA names below its first native-bf16 level (AVX512_CORE_BF16); a limit at one of these makes
# PyTorch's bf16 convolutions fall back to emulation, however capable the processor is.
BELOW_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
ISA_LIMIT_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@dataclass(frozen=True)
class CpuFeatures:
    """The processor's instructions that pigeon's choices depend on. `probe_cpu()` reads them from the machine;
    tests build their own to stand for a CPU they do not have."""

    name: str = "CPU"
    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False
    amx_bf16: bool = False
    vnni: bool = False  # AVX512-VNNI or AVX-VNNI: 8-bit dot products without 16-bit intermediate sums
    isa_limit: str | None = None  # ONEDNN_MAX_CPU_ISA as the user set it
    onednn_bf16: bool = True  # PyTorch's oneDNN agrees to run bf16 (it honours the limit too)

    @property
    def native_bf16(self) -> bool:
        limited = (self.isa_limit or "").upper() in BELOW_BF16_ISAS
        return (self.avx512_bf16 or self.amx_bf16) and self.onednn_bf16 and not limited

    @property
    def flags(self) -> list[str]:
        names = ("avx2", "avx512", "avx512_bf16", "amx_bf16", "vnni")
        return [n for n in names if getattr(self, n)]

    def describe(self) -> str:
        limit = f", {ISA_LIMIT_VARS[0]}={self.isa_limit}" if self.isa_limit else ""
        return f"{self.name} ({' '.join(self.flags) or 'no avx2'}{limit})"


@functools.lru_cache(maxsize=1)
def _proc_flags() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "", set()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return name, set(flags)


def _torch_probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private, so absent in some versions
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def probe_cpu() -> CpuFeatures:
    """This machine's CPU: /proc/cpuinfo where there is one, else PyTorch's own cpuinfo probes."""
    name, flags = _proc_flags()
    limit = next((os.environ[v] for v in ISA_LIMIT_VARS if os.environ.get(v)), None)
    mkldnn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        onednn_bf16 = bool(mkldnn()) if mkldnn is not None else False
    except RuntimeError:
        onednn_bf16 = False
    if flags:
        return CpuFeatures(name=name or platform.processor() or "CPU", avx2="avx2" in flags,
                           avx512="avx512f" in flags, avx512_bf16="avx512_bf16" in flags,
                           amx_bf16="amx_bf16" in flags, vnni=bool({"avx512_vnni", "avx_vnni"} & flags),
                           isa_limit=limit, onednn_bf16=onednn_bf16)
    return CpuFeatures(name=platform.processor() or platform.machine() or "CPU",
                       avx2=_torch_probe("_is_avx2_supported"), avx512=_torch_probe("_is_avx512_supported"),
                       avx512_bf16=_torch_probe("_is_avx512_bf16_supported"),
                       amx_bf16=_torch_probe("_is_amx_tile_supported"), vnni=_torch_probe("_is_vnni_supported"),
                       isa_limit=limit, onednn_bf16=onednn_bf16)


def cpu_has_bf16(cpu: CpuFeatures | None = None) -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX, and no ISA limit below them)."""
    return (cpu or probe_cpu()).native_bf16


def amp_choice(device: torch.device, mode: str, cpu: CpuFeatures | None = None) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for `mode` (auto, off, bf16, fp16) on `device` (None: full precision), and a sentence
    saying what was chosen and why. `cpu` stands for the processor (default: this machine's)."""
    if mode == "off":
        return None, "fp32 (amp off)"
    if mode == "fp16" and device.type == "cpu":
        raise ConfigError("amp=fp16 is for GPUs; on the CPU use amp=bf16 or amp=off")
    if mode == "fp16":
        return torch.float16, "fp16 autocast with loss scaling (amp fp16)"
    if device.type == "cuda":
        if mode == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16, f"bf16 autocast (amp {mode}{': the GPU supports bf16' if mode == 'auto' else ''})"
        return torch.float16, "fp16 autocast with loss scaling (amp auto: this GPU has no bf16)"
    if device.type != "cpu":
        return (torch.bfloat16, "bf16 autocast (amp bf16)") if mode == "bf16" else (
            None, f"fp32 (amp auto: no mixed precision on {device.type})")
    cpu = cpu or probe_cpu()
    if mode == "bf16":
        slow = "" if cpu.native_bf16 else (f"; {cpu.describe()} has no native bf16, so it is emulated and likely "
                                           "slower than amp off")
        return torch.bfloat16, f"bf16 autocast (amp bf16{slow})"
    if cpu.native_bf16:
        how = "AMX" if cpu.amx_bf16 else "AVX512-BF16"
        return torch.bfloat16, f"bf16 autocast (amp auto: {cpu.describe()} runs bf16 natively with {how})"
    if (cpu.avx512_bf16 or cpu.amx_bf16) and cpu.isa_limit:
        why = f"{ISA_LIMIT_VARS[0]}={cpu.isa_limit} keeps oneDNN below its bf16 instructions"
    else:
        why = f"{cpu.describe()} has no native bf16 (AVX512-BF16 or AMX), and emulated bf16 is slower than fp32"
    return None, f"fp32 (amp auto: {why})"


def amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for `mode` (auto, off, bf16, fp16) on `device`, or None for full precision."""
    return amp_choice(device, mode)[0]


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
