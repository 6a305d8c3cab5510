"""The time-to-accuracy and throughput benchmarks run end to end in their quick modes (nothing saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str) -> str:
    return subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                          check=True, timeout=300).stdout


def test_speed_quick_mode_reports_accuracy_and_time() -> None:
    match = re.search(r"pigeon seed 0: ([\d.]+)% in ([\d.]+)s", _run("speed.py"))
    assert match
    assert 10.0 < float(match.group(1)) <= 100.0 and float(match.group(2)) > 0


def test_throughput_quick_mode_reports_images_per_second() -> None:
    match = re.search(r"pigeon-n 16px batch 8: train (\d+) img/s, inference (\d+) img/s", _run("throughput.py"))
    assert match and int(match.group(1)) > 0 and int(match.group(2)) > 0
