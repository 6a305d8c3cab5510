"""The defaults grid runs end to end in its quick mode (nothing is saved).

(benchmarks/int8.py has no smoke test of its own: its arithmetic bound is the one tests/deploy/test_export.py
checks on the default and the 8-bit exports.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


# A benchmark's smoke run, 7-12 s: `make test-slow` runs these; the default suite stays under 5 minutes.
@pytest.mark.slow
def test_defaults_grid_quick_mode_trains_each_setting(tmp_path: Path) -> None:
    out = tmp_path / "defaults.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "defaults.py"), "--quick", "--out", str(out)],
                   capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.read_text())
    assert [(r["dataset"], r["setting"]) for r in result["rows"]] == [
        ("digits", "defaults"), ("digits", "no flip, no crop"),
        ("fashion", "defaults"), ("fashion", "no flip, no crop")]
    by = {(r["dataset"], r["setting"]): r for r in result["rows"]}
    assert by["digits", "defaults"]["imgsz"] == 8 and by["fashion", "defaults"]["imgsz"] == 28  # native sizes
    assert by["digits", "no flip, no crop"]["fliplr"] == 0.0 and not by["digits", "no flip, no crop"]["resized_crop"]
    assert all(0.0 <= r["test_top1"] <= 1.0 and r["epochs"] >= 1 for r in result["rows"])
    assert {v["dataset"] for v in result["verdicts"]} == {"digits", "fashion"}
