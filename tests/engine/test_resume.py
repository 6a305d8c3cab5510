"""Crash safety: a run killed with SIGKILL mid-epoch resumes to exactly the weights of an uninterrupted run;
Ctrl-C keeps the interrupted epoch's weights; --time and --save-period stop and save cleanly; the saved state
is read without running code."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pigeon
from pigeon.engine import checkpoint
from pigeon.engine import train as train_mod
from pigeon.errors import CheckpointError, ConfigError

RUN = {"epochs": 4, "batch": 128, "deterministic": True, "plots": False, "verbose": False}
STEPS_PER_EPOCH = 9  # digits: 1,212 training images after the 10% validation split, batch 128

# The child process trains and, at a chosen step, announces it is mid-epoch and waits to be killed.
CHILD = r"""
import json, sys, time
import pigeon
from pigeon.engine import train as train_mod

marker, kill_at, project, options = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
real_step, calls = train_mod.train_step, [0]

def step(*args, **kwargs):
    calls[0] += 1
    if calls[0] == kill_at:
        open(marker, "w").close()
        time.sleep(600)
    return real_step(*args, **kwargs)

train_mod.train_step = step
pigeon.train("digits", project=project, name="run", **options)
"""


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _epochs_in_csv(run_dir: Path) -> list[int]:
    with open(run_dir / "results.csv", newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("uninterrupted")
    cache = tmp_path_factory.mktemp("resume-cache")
    return pigeon.train("digits", project=str(project), name="run", cache_dir=str(cache), **RUN).run_dir


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(uninterrupted: Path, tmp_path: Path) -> None:
    marker = tmp_path / "mid-epoch"
    kill_at = 2 * STEPS_PER_EPOCH + 7  # the 7th step of epoch 3
    options = {**RUN, "cache_dir": str(uninterrupted.parent.parent / "cache")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), str(kill_at), str(tmp_path / "runs"),
                              json.dumps(options)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child never reached epoch 3"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # a real SIGKILL from the parent: no handler, no cleanup
    finally:
        child.wait(timeout=60)
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    run_dir = tmp_path / "runs" / "run"

    # What the kill left: two whole epochs, every file complete and loadable, no temporary files.
    state = torch.load(run_dir / "weights" / "last.state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 2 * STEPS_PER_EPOCH
    assert checkpoint.load_model(run_dir / "weights" / "last.safetensors")[1]["epoch"] == 2
    assert _epochs_in_csv(run_dir) == [1, 2]
    assert not [p for p in run_dir.rglob(".*.tmp")]

    result = pigeon.train(resume=str(run_dir), verbose=False)
    assert result.run_dir == run_dir and result.epochs == 4
    assert _epochs_in_csv(run_dir) == [1, 2, 3, 4]  # none missing, none twice
    _assert_same_weights(run_dir / "weights" / "last.safetensors", uninterrupted / "weights" / "last.safetensors")
    _assert_same_weights(run_dir / "weights" / "best.safetensors", uninterrupted / "weights" / "best.safetensors")


def test_ctrl_c_keeps_the_interrupted_epoch_and_resume_is_exact(uninterrupted: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_step, calls = train_mod.train_step, [0]

    def step(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 3 * STEPS_PER_EPOCH + 5:  # in the last epoch, 4
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)
    options = {**RUN, "cache_dir": str(uninterrupted.parent.parent / "cache")}
    with pytest.raises(KeyboardInterrupt):
        pigeon.train("digits", project=str(tmp_path), name="run", **options)
    run_dir = tmp_path / "run"
    _, meta = checkpoint.load_model(run_dir / "weights" / "last.safetensors")
    assert meta["interrupted"] is True and meta["epoch"] == 4  # the weights of the unfinished epoch 4
    assert torch.load(run_dir / "weights" / "last.state.pt", weights_only=True)["epoch"] == 3

    monkeypatch.setattr(train_mod, "train_step", real_step)
    pigeon.train(resume=str(run_dir), verbose=False)
    assert _epochs_in_csv(run_dir) == [1, 2, 3, 4]
    _assert_same_weights(run_dir / "weights" / "last.safetensors", uninterrupted / "weights" / "last.safetensors")


def test_time_budget_shortens_the_plan_and_stops_cleanly(tmp_path: Path, cache_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    result = pigeon.train("digits", project=str(tmp_path), name="run", cache_dir=str(cache_dir),
                          **{**RUN, "verbose": True}, time=1e-7)  # 0.36 ms: one epoch is all that fits
    assert result.epochs == 1 and _epochs_in_csv(result.run_dir) == [1]
    assert "time budget 1e-07 h: 1 of 4 planned epochs fit" in capsys.readouterr().out
    state = torch.load(result.run_dir / "weights" / "last.state.pt", weights_only=True)
    assert state["planned_epochs"] == 1
    assert checkpoint.load_model(result.best)[1]["epoch"] == 1


def test_fit_to_budget_shortens_the_plan_at_the_pace_so_far() -> None:
    notes: list[str] = []
    assert train_mod._fit_to_budget(2, 10, elapsed=20.0, budget=65.0, say=notes.append) == 6  # 10 s/epoch
    assert train_mod._fit_to_budget(2, 5, elapsed=20.0, budget=65.0, say=notes.append) == 5  # never longer
    assert train_mod._fit_to_budget(3, 10, elapsed=30.0, budget=5.0, say=notes.append) == 3  # never before now
    assert len(notes) == 2 and "6 of 10 planned epochs fit at 10.0s per epoch" in notes[0]


def test_plan_early_fits_whole_epochs_at_the_step_pace() -> None:
    notes: list[str] = []
    # 0.1 s per step, 100 steps: 11 s per epoch with evaluation; 5 s of setup leave 115 s, 10 epochs
    assert train_mod._plan_early(20, 100, 0.1, 5.0, budget=115.0 + 5.0, say=notes.append) == 10
    assert train_mod._plan_early(8, 100, 0.1, 5.0, budget=120.0, say=notes.append) == 8  # never longer
    assert train_mod._plan_early(8, 100, 1.0, 5.0, budget=60.0, say=notes.append) == 1  # at least one epoch
    assert len(notes) == 2 and "10 of 20 planned epochs fit at about 11s per epoch" in notes[0]


def test_a_tight_budget_plans_from_the_first_steps(tmp_path: Path, cache_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Planned within epoch 1, the schedule (and EMA horizon) of a 1-epoch run is a 1-epoch schedule."""
    result = pigeon.train("digits", project=str(tmp_path), name="run", cache_dir=str(cache_dir), epochs=5,
                          batch=32, amp="off", plots=False, verbose=True, time=1e-7)  # 37 steps per epoch
    out = capsys.readouterr().out
    assert "1 of 5 planned epochs fit" in out and "timed over steps 11-30" in out
    assert result.epochs == 1
    rows = (result.run_dir / "results.csv").read_text().splitlines()
    # the lr of the last step is one step from zero (peak 0.025): the schedule ended with the epoch
    assert len(rows) == 2 and float(rows[1].split(",")[1]) < 0.003


def test_save_period_keeps_every_nth_epoch(tmp_path: Path, cache_dir: Path) -> None:
    result = pigeon.train("digits", project=str(tmp_path), name="run", cache_dir=str(cache_dir),
                          **{**RUN, "epochs": 4}, save_period=2)
    weights = result.run_dir / "weights"
    assert sorted(p.name for p in weights.glob("epoch*.safetensors")) == ["epoch2.safetensors", "epoch4.safetensors"]
    assert checkpoint.load_model(weights / "epoch2.safetensors")[1]["epoch"] == 2
    _assert_same_weights(weights / "epoch4.safetensors", weights / "last.safetensors")


def test_resume_refuses_changed_options_and_foreign_folders(uninterrupted: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"resume continues .* drop epochs, lr"):
        pigeon.train(resume=str(uninterrupted), epochs=9, lr=0.5)
    with pytest.raises(ConfigError, match="drop data"):
        pigeon.train("fashion-mnist", resume=str(uninterrupted))
    with pytest.raises(ConfigError, match="not a run that can be resumed"):
        pigeon.train(resume=str(tmp_path))


def test_resume_notices_changed_data(tmp_path: Path, digits_folder: Any) -> None:
    data = digits_folder(tmp_path / "data", per_class=6)
    run = pigeon.train(str(data), project=str(tmp_path / "runs"), imgsz=16, **{**RUN, "epochs": 1})
    (data / "train" / "0" / "000.png").unlink()
    with pytest.raises(ConfigError, match="the data changed since this run started"):
        pigeon.train(resume=str(run.run_dir), epochs=1)


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.path}'",))


def test_a_state_file_that_would_run_code_is_refused(uninterrupted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "config.json").write_text((uninterrupted / "config.json").read_text())
    victim = tmp_path / "pwned"
    state = torch.load(uninterrupted / "weights" / "last.state.pt", weights_only=True)
    with open(run_dir / "weights" / "last.state.pt", "wb") as fh:
        pickle.dump({**state, "extra": _Payload(victim)}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="cannot read the run's saved state"):
        pigeon.train(resume=str(run_dir), verbose=False)
    assert not victim.exists()


def test_cli_resume_needs_no_data(uninterrupted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pigeon.cli import main

    assert main(["train", "--resume", str(uninterrupted), "--no-verbose", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"] == str(uninterrupted)


# --- Resuming the way a user runs it: default options, a folder of their own images (issue 16) ---------------

# The child for user-style runs: options exactly as given, on any data; killed from outside at a chosen step.
USER_CHILD = CHILD.replace('pigeon.train("digits", project=project, name="run", **options)',
                           'pigeon.train(options.pop("data"), project=project, name="run", **options)')
QUIET = {"epochs": 2, "plots": False, "verbose": False}  # neither changes what is trained; killed in epoch 2


@pytest.fixture
def digit_pngs(tmp_path: Path, digits_folder: Any) -> Path:
    """A held-out layout of 8x8 digit PNGs (train/ and val/), as a user's own folder would be."""
    return digits_folder(tmp_path / "pngs", splits=("train", "val"), per_class={"train": 26, "val": 8},
                         classes=[str(d) for d in range(10)], size=8)


def _kill_mid_run(data: str, project: Path, options: dict[str, Any], kill_at: int) -> Path:
    marker = project / "mid-epoch"
    project.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", USER_CHILD, str(marker), str(kill_at), str(project),
                              json.dumps({**options, "data": data})], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child never reached the step to be killed at"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        if child.stderr is not None:
            child.stderr.close()
    return project / "run"


@pytest.mark.parametrize("source", ["folder", "builtin"])
def test_a_default_options_run_killed_mid_run_resumes_exactly(source: str, digit_pngs: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pigeon.cli import main

    data = str(digit_pngs) if source == "folder" else "digits"
    reference = pigeon.train(data, project=str(tmp_path / "ref"), name="run", **QUIET)
    steps = json.loads((reference.run_dir / "config.json").read_text())
    n_train = 260 if source == "folder" else 1212
    steps_per_epoch = n_train // min(steps["batch"], n_train)
    run_dir = _kill_mid_run(data, tmp_path / "killed", QUIET, kill_at=steps_per_epoch + 1)  # in epoch 2
    assert _epochs_in_csv(run_dir) == [1]

    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--no-verbose", "--no-plots"]) == 0  # as a user types it
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"] == str(run_dir)
    assert _epochs_in_csv(run_dir) == [1, 2]
    _assert_same_weights(run_dir / "weights" / "last.safetensors", reference.last)
    _assert_same_weights(run_dir / "weights" / "best.safetensors", reference.best)


# Every option that `resolve` fills in. Each case spells out all of them as the reference run resolved them,
# except one left at its default: how an option was spelled must never decide whether a run can resume.
RESOLVED = ("imgsz", "channels", "lr", "weight_decay", "fliplr", "translate", "resized_crop", "ema_decay",
            "channels_last", "amp")


@pytest.fixture(scope="module")
def folder_reference(tmp_path_factory: pytest.TempPathFactory, digits_arrays: Any) -> tuple[Path, Path]:
    """(data folder, uninterrupted run) for a grayscale PNG folder trained with default options."""
    from PIL import Image

    images, labels = digits_arrays
    root = tmp_path_factory.mktemp("resolved") / "pngs"
    for digit in range(4):
        (root / str(digit)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == digit)[:40]):
            Image.fromarray(images[i], "L").save(root / str(digit) / f"{k}.png")
    run = pigeon.train(str(root), project=str(root.parent / "ref"), name="run", **QUIET)
    return root, run.run_dir


@pytest.mark.parametrize("left_default", RESOLVED)
def test_resume_works_whichever_resolved_option_was_left_at_its_default(
        left_default: str, folder_reference: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root, reference = folder_reference
    resolved = json.loads((reference / "config.json").read_text())
    spelled = {k: resolved[k] for k in RESOLVED if k != left_default}
    steps_per_epoch = 144 // min(resolved["batch"], 144)  # 160 images less the 10% held out
    real_step, calls = train_mod.train_step, [0]

    def step(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == steps_per_epoch + 1:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        pigeon.train(str(root), project=str(tmp_path), name="run", **QUIET, **spelled)
    monkeypatch.setattr(train_mod, "train_step", real_step)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {**resolved, "name": "run",
                                                                          "project": str(tmp_path)}
    pigeon.train(resume=str(tmp_path / "run"), verbose=False)
    _assert_same_weights(tmp_path / "run" / "weights" / "last.safetensors", reference / "weights" / "last.safetensors")
