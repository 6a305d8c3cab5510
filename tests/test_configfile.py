"""`pigeon train --config`: YAML/JSON with the CLI's names, the same refusals, CLI overrides, and a run's own
config.json reproduces the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pigeon
from pigeon.cli import main
from pigeon.configfile import read_config_file

FAST = ["--epochs", "1", "--batch", "8", "--imgsz", "16", "--amp", "off", "--device", "cpu", "--no-plots",
        "--no-verbose"]


def test_yaml_and_json_use_the_cli_names_and_refuse_typos_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("data: digits\nweight-decay: 0.001\nema: false\n")
    (tmp_path / "a.json").write_text(json.dumps({"data": "digits", "weight_decay": 0.001, "ema": False}))
    assert read_config_file(tmp_path / "a.yaml") == read_config_file(tmp_path / "a.json") == {
        "data": "digits", "weight_decay": 0.001, "ema": False}
    (tmp_path / "bad.yaml").write_text("data: digits\nepcohs: 3\n")
    with pytest.raises(pigeon.ConfigError, match=r"bad.yaml: unknown option 'epcohs' \(did you mean 'epochs'"):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(pigeon.ConfigError, match="one mapping"):
        read_config_file(tmp_path / "list.json")
    (tmp_path / "wrong.yaml").write_text("data: digits\nepochs: three\n")
    assert main(["train", "--config", str(tmp_path / "wrong.yaml")]) == 2  # the dataclass's own type check


def test_cli_options_override_the_file_and_a_run_config_reproduces_it(tmp_path: Path, digits_folder) -> None:
    data = digits_folder(splits=("train", "val"), per_class=8)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {data}\nepochs: 3\nlr: 0.05\nproject: {tmp_path / 'runs'}\nname: a\n")
    assert main(["train", "--config", str(cfg), *FAST]) == 0  # --epochs 1 beats the file's 3
    first = tmp_path / "runs" / "a"
    saved = json.loads((first / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["lr"] == 0.05 and saved["batch"] == 8

    # The run's config.json: same options, a new numbered folder (exist_ok, resume and device are dropped).
    assert main(["train", "--config", str(first / "config.json"), "--no-verbose"]) == 0
    again = tmp_path / "runs" / "a-2"
    rows = [(first / "results.csv").read_text(), (again / "results.csv").read_text()]
    strip = [[line.rsplit(",", 2)[0] for line in r.splitlines()] for r in rows]  # all but the timings
    assert strip[0] == strip[1]
    assert {k: v for k, v in json.loads((again / "config.json").read_text()).items() if k != "name"} == {
        k: v for k, v in saved.items() if k != "name"}
    # The Python API takes the same file.
    result = pigeon.train(config=first / "config.json", verbose=False, name="b")
    assert result.run_dir.name == "b" and result.config.lr == 0.05
