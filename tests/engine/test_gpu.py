"""The GPU path: run by benchmarks/gpu.sh on a lent GPU; skipped where PyTorch sees no CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import pigeon

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_train_on_gpu_matches_cpu_predictions(tmp_path: Path) -> None:
    result = pigeon.train(data="digits", epochs=5, device="cuda", project=str(tmp_path), verbose=False,
                          plots=False, cache_dir=str(tmp_path / "cache"))
    assert result.config.device.startswith("cuda")
    assert result.test is not None and result.test["top1"] >= 0.9
    from pigeon.data import load_dataset

    images = load_dataset("digits", verbose=False).splits["test"].images[:64]
    gpu = pigeon.load(result.best, device="cuda").predict(images)
    cpu = pigeon.load(result.best, device="cpu").predict(images)
    agree = np.mean([a.top1 == b.top1 for a, b in zip(gpu, cpu)])
    assert agree >= 0.95  # bf16 on the GPU vs fp32 on the CPU: rare near-ties may flip
