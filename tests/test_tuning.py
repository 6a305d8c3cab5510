"""`pigeon tune`: trials are ordinary runs, pruning ends a trial cleanly, the study resumes, the best options
come back as a config file, and the final run reports its test score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import pigeon
from pigeon.cli import main
from pigeon.config import TrainConfig, build
from pigeon.configfile import read_config_file
from pigeon.tuning import TuneConfig, parse_duration

optuna = pytest.importorskip("optuna")
FAST = {"epochs": 2, "batch": 8, "imgsz": 16, "amp": "off", "device": "cpu"}


def test_durations_and_refusals() -> None:
    assert parse_duration("1h") == 3600 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("0.5") == 1800
    with pytest.raises(pigeon.ConfigError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(pigeon.ConfigError, match="give a budget"):
        TuneConfig(data="digits")
    with pytest.raises(pigeon.ConfigError, match="did you mean 'weight_decay'"):
        TuneConfig(data="digits", trials=1, space="lr,wieght_decay")
    with pytest.raises(pigeon.ConfigError, match="tune's own --time"):
        TuneConfig(data="digits", trials=1, train={"time": 0.1})
    with pytest.raises(pigeon.ConfigError, match="did you mean 'epochs'"):
        pigeon.tune("digits", trials=1, epoch=3)


class PruneFromSecondTrial(optuna.pruners.BasePruner):
    """Deterministic stand-in for the median pruner: every trial after the first is pruned at its first epoch."""

    def prune(self, study: Any, trial: Any) -> bool:
        return trial.number >= 1


def test_a_study_prunes_cleanly_resumes_and_writes_the_best_config(
        tmp_path: Path, digits_folder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = digits_folder(splits=("train", "val", "test"), per_class=8)
    monkeypatch.setattr("pigeon.tuning._pruner", lambda optuna, name: PruneFromSecondTrial())
    result = pigeon.tune(str(data), trials=2, project=str(tmp_path), name="s", verbose=False, **FAST)
    study_dir = tmp_path / "s"
    assert [t["state"] for t in result.trials] == ["COMPLETE", "PRUNED"]
    # Every trial is an ordinary, finished run folder; the pruned one says so and stopped after epoch 1.
    runs = {r["name"]: r for r in pigeon.runs(study_dir / "trials")}
    assert runs["trial-000"]["status"] == "done" and runs["trial-000"]["epochs_run"] == 2
    assert runs["trial-001"]["status"].startswith("stopped: pruned by tune") and runs["trial-001"]["epochs_run"] == 1
    assert (study_dir / "trials" / "trial-001" / "weights" / "best.safetensors").is_file()
    # Selected on validation; the final run reports test.
    assert result.best_value == pytest.approx(runs["trial-000"]["val_top1"])
    summary = json.loads((study_dir / "tune.json").read_text())
    assert summary["final"]["test"]["top1"] == result.final.test["top1"]
    assert "test top-1" in (study_dir / "tune.md").read_text()
    for png in ("history.png", "importance.png"):
        assert (study_dir / png).stat().st_size > 5_000
    # The best options are a config file for `pigeon train --config`.
    best = (study_dir / "best.yaml").read_text()
    assert "lr:" in best and "weight_decay:" in best and f"data: {data}" in best
    options = read_config_file(study_dir / "best.yaml")
    assert options == read_config_file(study_dir / "best.json")
    assert build(TrainConfig, **options).lr == pytest.approx(result.best_params["lr"])  # what --config does

    # Running the same command again continues the study; other settings are refused.
    monkeypatch.setattr("pigeon.tuning._pruner", lambda optuna, name: optuna.pruners.NopPruner())
    assert main(["tune", "--data", str(data), "--trials", "1", "--project", str(tmp_path), "--name", "s",
                 "--no-final", "--epochs", "2", "--batch", "8", "--imgsz", "16", "--amp", "off",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "continuing the study" in out and "2 trial(s) already finished" in out
    assert len(json.loads((study_dir / "tune.json").read_text())["trials"]) == 3
    assert main(["tune", "--data", str(data), "--trials", "1", "--project", str(tmp_path), "--name", "s",
                 "--space", "lr"]) == 2
