"""benchmarks/gpu.sh, in its small CPU mode: it must run end to end and leave its results under $OUT."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# A benchmark's smoke run, 7-12 s: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_gpu_script_quick_mode_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "QUICK": "1", "OUT": str(out), "PYTHON": sys.executable,
           "PIGEON_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    device = json.loads((out / "device.json").read_text())
    assert device["torch"]
    runs = [json.loads(line) for line in (out / "time_to_accuracy.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and 0.1 < runs[0]["test_top1"] <= 1.0
    assert (out / "results_e1.csv").read_text().startswith("epoch,")
    speed = re.search(r"pigeon-n 16px batch 8: train (\d+) img/s, inference (\d+) img/s",
                      (out / "throughput.txt").read_text())
    assert speed and int(speed.group(1)) > 0 and int(speed.group(2)) > 0
    assert "quick mode" in (out / "gpu_tests.txt").read_text()  # the GPU tests run only on a GPU
