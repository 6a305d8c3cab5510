"""The multi-label benchmark runs end to end in its quick mode (300 Fashion-MNIST mosaics, 1 epoch; nothing saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "multilabel.py"


# A benchmark's smoke run: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_multilabel_benchmark_quick_mode_reports_real_figures(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300, cwd=tmp_path).stdout
    match = re.search(r"seed 0: test mAP ([\d.]+)%, micro-F1 ([\d.]+)% \(thresholds at 0.5: ([\d.]+)%\)", out)
    assert match and 0.0 < float(match.group(1)) <= 100.0, out
    assert not any(tmp_path.iterdir())
