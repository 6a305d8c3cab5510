"""`pigeon runs` and `pigeon compare`: read back from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pigeon
from pigeon.cli import main


@pytest.fixture
def two_runs(tmp_path: Path, digits_folder) -> Path:
    data = digits_folder(splits=("train", "val"), per_class=8)
    for name, lr in (("slow", 0.01), ("fast", 0.2)):
        pigeon.train(str(data), epochs=2, batch=8, imgsz=16, lr=lr, amp="off", device="cpu", plots=False,
                     verbose=False, project=str(tmp_path / "runs"), name=name)
    (tmp_path / "runs" / "notes").mkdir()  # not a run: ignored
    return tmp_path / "runs"


def test_runs_lists_sorts_and_prints_json(two_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = pigeon.runs(two_runs)
    assert [r["name"] for r in found] == ["slow", "fast"] and {r["status"] for r in found} == {"done"}
    assert found[0]["lr"] == 0.01 and found[0]["epochs_run"] == 2 and found[0]["val_top1"] is not None
    by_top1 = pigeon.runs(two_runs, sort="val_top1")
    assert by_top1[0]["val_top1"] >= by_top1[1]["val_top1"]
    assert main(["runs", "--project", str(two_runs), "--json", "--sort", "lr"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in printed] == ["slow", "fast"]
    assert main(["runs", "--project", str(two_runs), "--sort", "val_top"]) == 2  # close-match hint
    assert "did you mean 'val_top1'" in capsys.readouterr().err


def test_compare_writes_one_table_and_overlaid_curves(two_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(two_runs / "slow"), str(two_runs / "fast"), "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert "| slow | done |" in table and "| fast | done |" in table
    assert "## Options that differ" in table and "| name | lr |" in table
    report = json.loads((out / "compare.json").read_text())
    assert report["differing"] == ["lr"] and len(report["runs"]) == 2
    assert (out / "curves.png").stat().st_size > 10_000
    assert main(["compare", str(tmp_path / "nope")]) == 2


def test_an_unfinished_run_shows_as_incomplete(two_runs: Path) -> None:
    (two_runs / "fast" / "summary.json").unlink()
    run = {r["name"]: r for r in pigeon.runs(two_runs)}["fast"]
    assert run["status"] == "incomplete (2 of 2 epochs)" and run["val_top1"] is not None
