"""The defaults grid and the INT8 scheme benchmark run end to end in their quick modes (nothing is saved)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


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


def test_int8_benchmark_quick_mode_measures_every_scheme(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.json"  # on the shared digits checkpoint: the script's own training is pigeon.train
    subprocess.run([sys.executable, str(BENCHMARKS / "int8.py"), "--quick", "--out", str(out), "--model",
                    str(digits_run / "weights" / "best.safetensors")], capture_output=True, text=True, check=True,
                   timeout=300)
    rows = {r["scheme"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"u8s8-7bit", "u8s8", "u8u8"}
    assert rows["u8s8-7bit"]["weight_peak"] <= 64 and not rows["u8s8-7bit"]["can_saturate_without_vnni"]
    assert rows["u8s8"]["weight_peak"] == 127 and rows["u8s8"]["can_saturate_without_vnni"]
    assert all(r["images"] == 100 and 0.5 <= r["top1_agreement"] <= 1.0 for r in rows.values())
