"""The time-to-accuracy benchmark runs end to end in its quick mode (nothing saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str) -> str:
    return subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                          check=True, timeout=300).stdout


# A benchmark's smoke run: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_speed_quick_mode_reports_accuracy_and_time() -> None:
    match = re.search(r"pigeon seed 0: ([\d.]+)% in ([\d.]+)s", _run("speed.py"))
    assert match
    assert 10.0 < float(match.group(1)) <= 100.0 and float(match.group(2)) > 0


# throughput.py --quick runs inside benchmarks/gpu.sh's quick mode; tests/benchmarks/test_gpu_script.py checks it.
