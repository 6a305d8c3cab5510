"""The decode benchmark runs end to end in its quick mode (100 files of each kind; nothing saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode.py"


# A benchmark's smoke run: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_decode_benchmark_quick_mode_times_every_kind(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300, cwd=tmp_path).stdout
    assert len(re.findall(r"one thread [\d.]+s, \d+ threads [\d.]+s", out)) == 5, out
    assert not any(tmp_path.iterdir())
