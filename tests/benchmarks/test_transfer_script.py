"""The transfer benchmark runs end to end (1-epoch pretraining, 3-epoch fine-tuning; nothing is saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer.py"


# A benchmark's smoke run, 7-12 s: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_transfer_benchmark_quick_mode_compares_scratch_and_fine_tuned(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=600, cwd=tmp_path).stdout
    rows = dict(re.findall(r"^(.+?): mean ([\d.]+)% over 1 seeds", out, re.M))
    assert set(rows) == {"scratch", "fine-tuned (defaults)", "fine-tuned, --backbone-lr-mult 0.1",
                         "fine-tuned, --freeze-epochs 5"}, out
    assert all(0.0 <= float(v) <= 100.0 for v in rows.values())
    assert not (tmp_path / "runs").exists()  # quick mode leaves nothing behind
