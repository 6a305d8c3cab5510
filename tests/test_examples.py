"""The scaling-out examples run as written: each script (with stand-ins for the cluster's commands) starts
torchrun or pigeon with options that pigeon's own parser and config accept, and a restarted job resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from pigeon.cli import _given, build_parser
from pigeon.config import TrainConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RECORDER = """#!/bin/sh
python3 -c 'import json, sys; print(json.dumps([sys.argv[1]] + sys.argv[2:]))' "$(basename "$0")" "$@" >> "$CALLS"
"""


def _fake_commands(tmp_path: Path, *names: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")
    (bin_dir / "scontrol").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls.jsonl"),
            "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "42"}


def _calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def _pigeon_options(argv: list[str]) -> TrainConfig:
    """What `pigeon train <argv>` would train with: the real parser, then the config's own checks."""
    args = build_parser().parse_args(argv)
    assert args.verb == "train"
    given = _given(args, TrainConfig)
    if given.get("resume"):
        return dataclasses.replace(TrainConfig(data="resumed"), **given)
    return TrainConfig(**given)


def test_multi_gpu_script_lists_the_gpus(tmp_path: Path) -> None:
    env = _fake_commands(tmp_path, "pigeon")
    subprocess.run(["bash", str(EXAMPLES / "multi_gpu.sh"), "/data/xrays"], env=env, check=True, timeout=60)
    ((command, *argv),) = _calls(tmp_path)
    assert command == "pigeon"
    cfg = _pigeon_options(argv)
    assert cfg.device == "0,1,2,3" and cfg.sync_bn and cfg.data == "/data/xrays" and cfg.batch % 4 == 0


@pytest.mark.parametrize("requeued", [False, True])
def test_slurm_script_starts_one_torchrun_per_node_and_resumes_when_requeued(tmp_path: Path, requeued: bool) -> None:
    script = (EXAMPLES / "slurm.sbatch").read_text().replace("/shared", str(tmp_path / "shared"))
    if requeued:
        state = tmp_path / "shared" / "runs" / "xrays" / "weights" / "last.state.pt"
        state.parent.mkdir(parents=True)
        state.touch()
    (tmp_path / "job.sbatch").write_text(script)
    env = _fake_commands(tmp_path, "srun")
    subprocess.run(["bash", str(tmp_path / "job.sbatch"), "/data/xrays"], env=env, check=True, timeout=60)
    ((command, launcher, *argv),) = _calls(tmp_path)
    assert (command, launcher) == ("srun", "torchrun")
    assert argv[argv.index("--rdzv-endpoint") + 1] == "node-a:29500"
    cfg = _pigeon_options(argv[argv.index("pigeon") + 1:])
    if requeued:
        assert cfg.resume == str(tmp_path / "shared" / "runs" / "xrays")
    else:
        assert cfg.sync_bn and cfg.batch == 4096 and cfg.project == str(tmp_path / "shared" / "runs")


@pytest.mark.parametrize("restarted", [False, True])
def test_kubeflow_pods_run_torchrun_and_a_restarted_pod_resumes(tmp_path: Path, restarted: bool) -> None:
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load((EXAMPLES / "kubeflow-pytorchjob.yaml").read_text())
    assert job["kind"] == "PyTorchJob" and job["spec"]["nprocPerNode"] == "8"
    specs = job["spec"]["pytorchReplicaSpecs"]
    commands = {role: spec["template"]["spec"]["containers"][0]["command"] for role, spec in specs.items()}
    assert commands["Master"] == commands["Worker"]  # the operator's PET_* variables tell the pods apart
    shell, flag, body = commands["Master"]
    body = body.replace("/runs", str(tmp_path / "runs"))
    if restarted:
        state = tmp_path / "runs" / "xrays" / "weights" / "last.state.pt"
        state.parent.mkdir(parents=True)
        state.touch()
    env = _fake_commands(tmp_path, "torchrun")
    subprocess.run([shell, flag, body], env=env, check=True, timeout=60)
    ((command, module_flag, module, *argv),) = _calls(tmp_path)
    assert (command, module_flag, module) == ("torchrun", "-m", "pigeon")
    cfg = _pigeon_options(argv)
    assert cfg.resume == (str(tmp_path / "runs" / "xrays") if restarted else None)
    assert cfg.device == "cuda"
