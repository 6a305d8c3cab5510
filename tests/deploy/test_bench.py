"""pigeon.bench: one row per (format, size) with accuracy, latency, throughput, size and parity; bench.json and
bench.md written; bad options refused before anything is measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pigeon
from pigeon.errors import ConfigError, ExportError


@pytest.fixture
def best(digits_run: Path) -> Path:
    return digits_run / "weights" / "best.safetensors"


def test_bench_torch_and_onnx(best: Path, digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights_before = sorted(p.name for p in best.parent.iterdir())
    rows = pigeon.bench(best, formats="torch,onnx", runs=50, warmup=2, batch=32, throughput_seconds=0.2,
                        project=str(tmp_path / "bench"), name="b", verbose=False)
    assert capsys.readouterr().out == ""  # verbose=False: quiet
    assert [(r["format"], r["imgsz"]) for r in rows] == [("torch", 8), ("onnx", 8)]
    test_top1 = json.loads((digits_run / "summary.json").read_text())["test"]["top1"]
    for r in rows:
        assert (r["split"], r["images"], r["latency_runs"], r["batch"]) == ("test", 450, 50, 32)
        assert 0.0 <= r["top1"] <= 1.0
        assert r["top1"] == pytest.approx(test_top1, abs=0.01)  # the same model, measured on the same split
        assert 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
        assert r["throughput_img_s"] > 0 and r["size_mb"] > 0
    torch_row, onnx_row = rows
    assert torch_row["parity"] is None
    assert torch_row["size_mb"] == pytest.approx(best.stat().st_size / 1e6)
    assert onnx_row["parity"] is not None and onnx_row["parity"]["top1_agreement"] >= 0.995
    assert onnx_row["parity"]["images"] == 450
    assert sorted(p.name for p in best.parent.iterdir()) == weights_before  # the exports lived in a temp folder

    saved = json.loads((tmp_path / "bench" / "b" / "bench.json").read_text())
    assert saved["rows"] == rows
    assert saved["config"]["formats"] == "torch,onnx" and saved["config"]["runs"] == 50
    table = (tmp_path / "bench" / "b" / "bench.md").read_text().splitlines()
    assert table[0].startswith("| format | input | top-1 |") and len(table) == 2 + len(rows)
    assert table[2].startswith("| torch | 8px |") and table[2].endswith("| (reference) |")
    assert table[3].startswith("| onnx | 8px |")
    assert table[3].endswith(f"| {onnx_row['parity']['top1_agreement']:.2%} |")


def test_bench_verbose_prints_rows_and_table(best: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = pigeon.bench(best, formats="torch", runs=50, warmup=0, throughput_seconds=0.1, project=str(tmp_path),
                        name="v", verbose=True)
    out = capsys.readouterr().out
    assert len(rows) == 1 and rows[0]["format"] == "torch"
    assert "torch" in out and "8px" in out and "| torch | 8px |" in out
    assert f"results written to {tmp_path / 'v'}" in out


def test_bench_without_project_writes_nothing(best: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = pigeon.bench(best, formats="torch", runs=50, warmup=0, throughput_seconds=0.1, project=None,
                        verbose=False)
    assert len(rows) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("options", "message"), [
    ({"formats": "torch,tflite"}, "formats='tflite' is not valid"),
    ({"runs": 49}, "runs=49 is out of range; it must be >= 50"),
    ({"imgsz": "8,big"}, "imgsz='8,big' is not a comma-separated list of sizes"),
    ({"imgsz": "4"}, "imgsz=4 is out of range"),
    ({"throughput_seconds": 0.0}, "throughput_seconds=0.0 is out of range"),
])
def test_bench_refuses_bad_options(best: Path, tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pigeon.bench(best, project=str(tmp_path / "bench"), verbose=False, **options)
    assert not (tmp_path / "bench").exists()


def test_bench_at_a_size_the_weights_cannot_run(best: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="changes its layout between 8 and 16 px"):
        pigeon.bench(best, formats="torch", imgsz="16", runs=50, throughput_seconds=0.1,
                     project=str(tmp_path / "bench"), verbose=False)
    assert not (tmp_path / "bench").exists()


def test_bench_sizes_take_height_x_width() -> None:
    from pigeon.config import BenchConfig

    assert BenchConfig(model="m.safetensors", imgsz="28, 16x32,24x24").sizes == [28, (16, 32), 24]
    with pytest.raises(ConfigError, match="the width 4 is out of range"):
        BenchConfig(model="m.safetensors", imgsz="16x4")
