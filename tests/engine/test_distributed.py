"""Data-parallel training, on the CPU with the gloo backend and 2 real processes.

The processes are started as torchrun starts its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), without
its agent process, which would only add a third start-up of PyTorch. Two runs cover the promises: a whole 2-process
run equals a 1-process run of the same global batch and seed (weights, val figures and the final reports, which
also equal `pigeon val` of its checkpoint), and a rank killed mid-epoch ends the run with a clear message and a
state that 1 process resumes. `launch` (what `pigeon train --device 0,1` calls) is checked for what it hands
torchrun.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import pigeon
from pigeon.cli import _with_device, build_parser, distributed_gpus
from pigeon.engine import distributed
from pigeon.engine.device import select_device
from pigeon.errors import ConfigError

OPTIONS = ["--epochs", "1", "--batch", "32", "--device", "cpu", "--sync-bn", "--no-plots", "--threads", "1"]


def _run_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PIGEON_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _workers(argv_of_rank: list[list[str]], env: dict[str, str], **popen: object) -> list[subprocess.Popen]:
    """One process per rank, each with the variables torchrun gives its workers."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    size = len(argv_of_rank)
    return [subprocess.Popen([sys.executable, *argv], env={
        **env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_WORLD_SIZE": str(size),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}, **popen) for rank, argv in enumerate(argv_of_rank)]


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# --- the pieces, in one process ---------------------------------------------------------------------------

def test_parts_cover_every_item_once_in_order() -> None:
    for n in (0, 1, 5, 32, 33):
        for size in (1, 2, 3):
            pieces = [range(n)[distributed.part(distributed.World(r, size), n)] for r in range(size)]
            assert [i for p in pieces for i in p] == list(range(n))
            assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_world_of_one_changes_nothing() -> None:
    world = distributed.World()
    assert not world.active and world.main
    rows = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(world, rows, 3) is rows
    assert distributed.broadcast_text(world, "runs/x", torch.device("cpu")) == "runs/x"
    assert distributed.wrap(nn.Linear(2, 2), world, torch.device("cpu")).__class__ is nn.Linear
    distributed.check_batch(world, 7)  # any batch splits over one process


def test_world_from_env_reads_torchrun_variables() -> None:
    world = distributed.world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.main, world.active) == (3, 4, 1, False, True)
    with pytest.raises(ConfigError, match="whole numbers"):
        distributed.world_from_env({"WORLD_SIZE": "two"})


def test_global_batch_must_split_over_the_processes() -> None:
    with pytest.raises(ConfigError, match="batch=30 .* 4 processes; use a multiple of 4, e.g. 28"):
        distributed.check_batch(distributed.World(0, 4), 30)


def test_launch_hands_torchrun_the_processes_and_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.run as torchrun

    seen = {}
    monkeypatch.setattr(torchrun, "run", lambda args: seen.update(vars(args), gpus=os.environ["CUDA_VISIBLE_DEVICES"]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert distributed.launch(["train", "--data", "d", "--device", "cuda"], 2, [3, 5]) == 0
    assert (seen["nproc_per_node"], seen["standalone"], seen["module"]) == ("2", True, True)
    assert (seen["training_script"], seen["training_script_args"]) == ("pigeon", ["train", "--data", "d", "--device",
                                                                                 "cuda"])
    assert seen["gpus"] == "3,5"


def test_a_rank_stopped_by_torchrun_says_so() -> None:
    with pytest.raises(distributed.RankStopped, match="stopped by torchrun"):
        distributed._stopped_by_launcher(signal.SIGTERM, None)


def test_device_lists_mean_torchrun() -> None:
    assert distributed.device_list("0,1,2,3") == [0, 1, 2, 3]
    assert distributed.device_list("cuda:1") is None and distributed.device_list("0") is None
    with pytest.raises(ConfigError, match="starts one process per GPU through torchrun"):
        select_device("0,1")
    args = build_parser().parse_args(["train", "--data", "d", "--device", "0,1"])
    assert distributed_gpus(args) == [0, 1]
    assert _with_device(["train", "--device", "0,1", "--data", "d"], "cuda") == ["train", "--device", "cuda",
                                                                                "--data", "d"]
    assert _with_device(["train", "--device=0,1"], "cuda") == ["train", "--device=cuda"]


def test_cpu_sync_batchnorm_matches_batchnorm_in_a_world_of_one(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        synced = distributed.sync_batchnorm(copy.deepcopy(plain), torch.device("cpu"))
        assert isinstance(synced[1], distributed.CpuSyncBatchNorm)
        x = torch.randn(5, 3, 7, 7) * 3 + 1
        for model in (plain, synced):
            model.train()
            model(x).square().sum().backward()
        torch.testing.assert_close(synced(x), plain(x), rtol=1e-4, atol=1e-5)
        for (name, a), b in zip(plain.state_dict().items(), synced.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        for a, b in zip(plain.parameters(), synced.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4)
        plain.eval(), synced.eval()
        torch.testing.assert_close(synced(x), plain(x))
    finally:
        dist.destroy_process_group()


# --- two real processes -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, digits_arrays: tuple) -> Path:
    """A user's folder of digit PNGs with train, val and test splits (default size and flips apply)."""
    from PIL import Image

    images, labels = digits_arrays
    root = tmp_path_factory.mktemp("ddp-data")
    for split, (lo, hi) in {"train": (0, 640), "val": (640, 840), "test": (840, 1040)}.items():
        for i in range(lo, hi):
            path = root / split / str(labels[i]) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)
    return root


def test_two_processes_equal_one(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    args = ["train", "--data", str(folder), "--project", str(tmp_path), *OPTIONS]
    ranks = _workers([["-m", "pigeon", *args, "--name", "two"]] * 2, _run_env(cache), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    outputs = [rank.communicate(timeout=240) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    stdout = outputs[0][0] + outputs[1][0]
    monkeypatch.setenv("PIGEON_CACHE_DIR", str(cache))  # the cache the 2-process run built
    one = pigeon.cli.main([*args, "--name", "one"])
    assert one == 0

    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    assert len([line for line in stdout.splitlines() if line.startswith('{"run_dir"')]) == 1  # rank 0 only
    assert "data parallel: 2 processes (cpu), each 16 of the global batch of 32" in outputs[0][0]
    assert not outputs[1][0]  # rank 1 prints nothing
    a, b = load_file(str(one_dir / "weights" / "last.safetensors")), load_file(str(two_dir / "weights" /
                                                                                    "last.safetensors"))
    assert a.keys() == b.keys()
    for name in a:  # the same steps on the same images: only the order of float additions differs
        torch.testing.assert_close(b[name].float(), a[name].float(), rtol=1e-3, atol=1e-3, msg=name)
    (row_one,), (row_two,) = _rows(one_dir), _rows(two_dir)
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "val_macro_f1"):
        assert float(row_two[key]) == pytest.approx(float(row_one[key]), abs=2e-4), key

    summary_one = json.loads((one_dir / "summary.json").read_text())
    summary_two = json.loads((two_dir / "summary.json").read_text())
    assert (summary_one["processes"], summary_two["processes"]) == (1, 2)
    for split in ("val_report", "test_report"):
        assert summary_two[split]["confusion"] == summary_one[split]["confusion"]
        assert summary_two[split]["top1"] == summary_one[split]["top1"]
    # The 2-process run's reports are exact: a single-process `pigeon val` of its checkpoint says the same.
    checked = pigeon.val(two_dir / "weights" / "best.safetensors", str(folder), split="test", device="cpu",
                         project=None, verbose=False)
    assert checked["confusion"] == summary_two["test_report"]["confusion"]
    assert checked["top1"] == summary_two["test_report"]["top1"]
    assert checked["loss"] == pytest.approx(summary_two["test_report"]["loss"], rel=1e-5)
    files = {run: sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) for run in (one_dir, two_dir)}
    assert files[two_dir] == files[one_dir]  # rank 1 wrote nothing of its own


# Each process trains; rank 1 announces, at a chosen step, that it is mid-epoch, then waits to be killed.
CHILD = r"""
import os, sys, time
from pathlib import Path
from pigeon.engine import train as train_mod
from pigeon.cli import main

marker, kill_at = sys.argv[1], int(sys.argv[2])
if os.environ["RANK"] == "1":
    real_step, calls = train_mod.train_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            Path(marker).write_text(str(os.getpid()))
            time.sleep(600)
        return real_step(*args, **kwargs)

    train_mod.train_step = step
sys.exit(main(sys.argv[3:]))
"""


def test_a_rank_that_dies_ends_the_run_on_every_rank_and_one_process_resumes(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, marker, script = tmp_path / "cache", tmp_path / "rank1.pid", tmp_path / "child.py"
    script.write_text(CHILD)
    steps_per_epoch = 640 // 32
    args = ["train", "--data", str(folder), "--project", str(tmp_path), "--name", "run", *OPTIONS[2:],
            "--epochs", "2"]
    rank0, rank1 = _workers([["-m", "pigeon", *args], [str(script), str(marker), str(steps_per_epoch + 5), *args]],
                            _run_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() or not marker.read_text():
            assert rank0.poll() is None and rank1.poll() is None, rank0.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "rank 1 never reached the step to die at"
            time.sleep(0.05)
        os.kill(int(marker.read_text()), signal.SIGKILL)  # a real SIGKILL: the rank dies without a word
        out, err = rank0.communicate(timeout=120)
        rank1.communicate(timeout=60)
    finally:
        for rank in (rank0, rank1):
            if rank.poll() is None:
                rank.kill()
    assert rank0.returncode != 0 and rank1.returncode == -signal.SIGKILL
    assert "rank 0 of 2: stopped" in err, err[-3000:]
    assert "continue with `pigeon train --resume <run folder>`, with any number of processes" in err
    run_dir = tmp_path / "run"
    assert [row["epoch"] for row in _rows(run_dir)] == ["1"]  # the whole first epoch, nothing of the second
    assert not (run_dir / "summary.json").exists()

    monkeypatch.setenv("PIGEON_CACHE_DIR", str(cache))
    resumed = pigeon.train(resume=str(run_dir), verbose=False)  # one process continues the 2-process run
    assert resumed.epochs == 2 and [row["epoch"] for row in _rows(run_dir)] == ["1", "2"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 1 and summary["test"]["top1"] > 0.5
