"""The accuracy benchmark runs end to end (a 1-epoch digits smoke run; nothing is saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"


# A benchmark's smoke run: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_accuracy_benchmark_quick_mode_reports_a_real_accuracy() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    match = re.search(r"digits seed 0: test top-1 ([\d.]+)% in ([\d.]+)s", out)
    assert match, out
    assert 10.0 < float(match.group(1)) <= 100.0  # one epoch: far above chance (10%), but not a fixed value
