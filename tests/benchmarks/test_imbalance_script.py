"""The imbalance benchmark runs end to end in its quick mode (digits made 10:1, 1 epoch per mode; nothing saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "imbalance.py"


# A benchmark's smoke run: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_imbalance_benchmark_quick_mode_runs_every_mode(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300, cwd=tmp_path).stdout
    counts = [int(v) for v in re.search(r"training images per class: \[([\d, ]+)\]", out).group(1).split(",")]
    assert counts[0] >= 9 * counts[-1]  # 10:1, rounded
    for mode in ("none", "weights", "sampler"):
        match = re.search(rf"{mode} seed 0: balanced accuracy ([\d.]+)%", out)
        assert match and 0.0 < float(match.group(1)) <= 100.0, out
    assert not any(tmp_path.iterdir())
