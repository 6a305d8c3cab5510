"""Config files for `pigeon train --config cfg.yaml|cfg.json`: the CLI's option names, validated by TrainConfig.

A run's own `config.json` (runs/train/<name>/config.json) is a config file too. It holds what the run resolved
(lr, imgsz, ema_decay, ...) and so reproduces it, minus three keys that describe that run rather than the
training: `resume` (a file never resumes; use --resume), `exist_ok` (reproducing must not write into the old
folder) and `device` (the resolved device of the machine it ran on; this machine picks its own unless given).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pigeon.config import TrainConfig
from pigeon.errors import ConfigError, did_you_mean

RUN_SPECIFIC = ("resume", "exist_ok", "device")


def is_run_config(path: Path) -> bool:
    """Whether `path` is the config.json a training run wrote into its folder."""
    return path.name == "config.json" and (path.parent / "weights").is_dir()


def read_config_file(path: str | os.PathLike[str], cls: type = TrainConfig) -> dict[str, Any]:
    """The options in a YAML or JSON file, keyed by field name; unknown keys are refused with a close match.

    Keys may be written as on the command line (`weight-decay`) or as in Python (`weight_decay`).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; give a .yaml, .yml or .json file, or a run's "
                          "runs/train/<name>/config.json")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML: pip install 'pigeon[yaml]' (or write the "
                              "file as JSON)") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    elif path.suffix.lower() == ".json":
        try:
            loaded = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
    else:
        raise ConfigError(f"{path}: a config file must end in .yaml, .yml or .json")
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file holds one mapping of option: value, not a "
                          f"{type(loaded).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    options: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown option {key!r}{did_you_mean(name, known)}; valid options: "
                              f"{', '.join(sorted(known))}")
        options[name] = value
    if is_run_config(path):
        for key in RUN_SPECIFIC:
            options.pop(key, None)
    return options


def write_config_file(path: str | os.PathLike[str], options: dict[str, Any]) -> Path:
    """Write options as YAML (.yaml/.yml, needs PyYAML) or JSON, readable back by read_config_file."""
    from pigeon.io import atomic_write_text

    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        atomic_write_text(path, yaml.safe_dump(options, sort_keys=False))
    else:
        atomic_write_text(path, json.dumps(options, indent=2) + "\n")
    return path
