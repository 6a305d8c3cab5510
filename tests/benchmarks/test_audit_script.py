"""The audit benchmark runs end to end (a tiny planted digits folder; nothing is saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "audit.py"


# A benchmark's smoke run, 7-12 s: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_audit_benchmark_quick_mode_scores_the_planted_issues(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300, cwd=tmp_path).stdout
    found = dict(re.findall(r"(exact|near|leak_exact|leak_near|flip) (\d+/\d+)", out))
    assert set(found) == {"exact", "near", "leak_exact", "leak_near", "flip"}, out
    assert found["exact"] == "4/4" and found["leak_exact"] == "2/2"  # byte copies are always found
    assert re.search(r"out-of-fold top-1 [\d.]+%", out), out
    assert not any(tmp_path.iterdir())  # quick mode leaves nothing behind
