"""The tuning benchmark runs end to end in its quick mode (2 trials of 1 epoch on digits; nothing is saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tune.py"


# A benchmark's smoke run, 7-12 s: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_tune_benchmark_quick_mode_compares_tuned_with_defaults(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300, cwd=tmp_path).stdout
    assert re.search(r"default test top-1 [\d.]+%", out), out
    assert re.search(r"tuned   test top-1 [\d.]+% .* after 2 trials", out), out
    assert re.search(r"tuning (improves on|does not beat|is within the seed spread of) the defaults", out), out
    assert not any(tmp_path.iterdir())  # quick mode leaves nothing behind
