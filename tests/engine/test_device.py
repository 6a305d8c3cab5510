"""The CPU probe and `--amp auto`: bf16 only where the processor runs it natively and no ISA limit forbids it.

CPUs this machine is not are faked with CpuFeatures; the probe itself is checked against the real machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pigeon.engine import device as dev
from pigeon.engine.device import CpuFeatures, amp_choice, probe_cpu
from pigeon.errors import ConfigError

CPU = torch.device("cpu")
AVX2 = CpuFeatures(name="AMD EPYC 7B12", avx2=True, onednn_bf16=False)  # Zen 2: no AVX-512 at all
AVX512 = CpuFeatures(name="Xeon Gold 6248", avx2=True, avx512=True, vnni=True)  # Cascade Lake: bf16 emulated
BF16 = CpuFeatures(name="AMD EPYC 9B14", avx2=True, avx512=True, avx512_bf16=True, vnni=True)  # Zen 4
AMX = CpuFeatures(name="Xeon 8480", avx2=True, avx512=True, avx512_bf16=True, amx_bf16=True, vnni=True)


@pytest.mark.parametrize(("cpu", "dtype"), [(AVX2, None), (AVX512, None), (BF16, torch.bfloat16),
                                            (AMX, torch.bfloat16)])
def test_auto_picks_bf16_only_where_it_is_native(cpu: CpuFeatures, dtype: torch.dtype | None) -> None:
    chosen, why = amp_choice(CPU, "auto", cpu)
    assert chosen == dtype
    assert why.startswith("bf16 autocast (amp auto:" if dtype else "fp32 (amp auto:") and cpu.name in why
    if cpu is AMX:
        assert "AMX" in why
    if cpu is AVX512:  # oneDNN would run bf16 here, by emulation: slower than fp32
        assert cpu.onednn_bf16 and "no native bf16" in why


@pytest.mark.parametrize("limit", ["AVX2", "avx512_core", "AVX512_CORE_VNNI"])
def test_an_isa_limit_below_bf16_means_fp32(limit: str) -> None:
    limited = CpuFeatures(**{**BF16.__dict__, "isa_limit": limit})
    chosen, why = amp_choice(CPU, "auto", limited)
    assert chosen is None and f"ONEDNN_MAX_CPU_ISA={limit}" in why


@pytest.mark.parametrize("limit", ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL"])
def test_an_isa_limit_at_or_above_bf16_keeps_it(limit: str) -> None:
    assert amp_choice(CPU, "auto", CpuFeatures(**{**AMX.__dict__, "isa_limit": limit}))[0] == torch.bfloat16


def test_explicit_modes_are_obeyed_and_emulation_is_named() -> None:
    assert amp_choice(CPU, "off", BF16) == (None, "fp32 (amp off)")
    chosen, why = amp_choice(CPU, "bf16", AVX2)
    assert chosen == torch.bfloat16 and "emulated" in why and "amp off" in why
    assert amp_choice(CPU, "bf16", BF16) == (torch.bfloat16, "bf16 autocast (amp bf16)")
    with pytest.raises(ConfigError, match="amp=fp16 is for GPUs"):
        amp_choice(CPU, "fp16", BF16)


def test_the_probe_reads_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    cpu = probe_cpu()
    if flags:
        assert cpu.avx2 == ("avx2" in flags) and cpu.avx512_bf16 == ("avx512_bf16" in flags)
        assert cpu.vnni == bool({"avx512_vnni", "avx_vnni"} & flags)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    limited = probe_cpu()
    assert limited.isa_limit == "AVX2" and not limited.native_bf16
    assert amp_choice(CPU, "auto")[0] is None  # what a user limiting oneDNN gets, on any machine


def test_without_proc_cpuinfo_torch_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "_proc_flags", lambda: ("", set()))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    cpu = probe_cpu()
    assert cpu.avx512_bf16 == bool(torch.cpu._is_avx512_bf16_supported())  # type: ignore[attr-defined]


def test_a_run_says_which_precision_and_why(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    import pigeon

    monkeypatch.setattr(dev, "probe_cpu", lambda: AVX2)
    run = pigeon.train("digits", epochs=1, device="cpu", plots=False, project=str(tmp_path), batch=256)
    out = capsys.readouterr().out
    assert "precision: fp32 (amp auto: AMD EPYC 7B12 (avx2) has no native bf16" in out
    assert run.config.amp == "off"
