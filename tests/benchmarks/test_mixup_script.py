"""The mixup benchmark runs end to end in its quick mode (digits, 1 epoch per setting; nothing saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mixup.py"


# A benchmark's smoke run: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_mixup_benchmark_quick_mode_runs_every_setting(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300, cwd=tmp_path).stdout
    for setting in ("none", "mixup 0.2", "cutmix 1.0"):
        match = re.search(rf"digits {setting} seed 0: test top-1 ([\d.]+)%", out)
        assert match and 0.0 < float(match.group(1)) <= 100.0, out
    assert not any(tmp_path.iterdir())
