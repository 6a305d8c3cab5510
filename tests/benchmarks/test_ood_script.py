"""The out-of-distribution benchmark runs end to end in its quick mode (a 1-epoch digits model fed 500
Fashion-MNIST images; nothing saved)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ood.py"


# A benchmark's smoke run: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_ood_benchmark_quick_mode_reports_auroc(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=300, cwd=tmp_path).stdout
    match = re.search(r"digits model, fashion-mnist images: AUROC ([\d.]+) \(plain softmax ([\d.]+)\); at "
                      r"--min-conf [\d.]+ ([\d.]+)% of own test answered", out)
    assert match, out
    assert 0.0 <= float(match.group(1)) <= 1.0 and 0.0 <= float(match.group(2)) <= 1.0
    assert float(match.group(3)) >= 95.0  # the threshold answers at least 95% of the model's own test images
    assert not any(tmp_path.iterdir())
