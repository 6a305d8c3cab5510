"""Data-parallel training under torchrun: all of pigeon's rank logic, in one place.

torchrun (`torch.distributed.run`) starts one process per device and tells each its RANK, WORLD_SIZE and
LOCAL_RANK. Every rank holds the whole model and draws the same seeded global order of images; each step, rank r
trains on its slice of the global batch, and DistributedDataParallel averages the gradients, so the update is the
one a single process would make on the whole batch. Evaluation splits the images over the ranks and gathers every
logit back, so each rank builds the same report from the same numbers a single process would see. Only rank 0
prints and writes files; the others hold the same state and wait for it where they read what it wrote.

Outside torchrun (WORLD_SIZE unset or 1), `World()` is a no-op: one process, no process group, nothing changes.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pigeon.errors import ConfigError

# Long enough for rank 0 to decode and cache a large folder while the others wait for it; a rank that dies is
# noticed sooner than this, by torchrun, which then stops the others.
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("PIGEON_DIST_TIMEOUT_MIN", "60")))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_env(env: Any = None) -> World:
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        return World(rank=int(env.get("RANK", "0")), size=size, local_rank=int(env.get("LOCAL_RANK", "0")))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun sets them); unset them "
                          "to train in one process") from None


def start(device_name: str) -> tuple[World, torch.device | None]:
    """Join the process group when launched by torchrun; returns the world and this rank's device (None
    outside torchrun, where the caller chooses as usual)."""
    world = world_from_env()
    if not world.active:
        return world, None
    import torch.distributed as dist

    name = device_name.split(":")[0]
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={device_name!r} cannot train under torchrun; use cpu or cuda (each rank takes "
                          "the GPU of its LOCAL_RANK)")
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {world.rank} has LOCAL_RANK {world.local_rank}, but this machine shows "
                              f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    # torchrun ends the other ranks with SIGTERM when one fails: turn that into an exception, so that every
    # rank says why it stopped instead of vanishing.
    signal.signal(signal.SIGTERM, _stopped_by_launcher)
    return world, device


class RankStopped(RuntimeError):
    pass


def _stopped_by_launcher(signum: int, frame: Any) -> None:
    raise RankStopped("stopped by torchrun (SIGTERM), usually because another rank failed; its error is above")


def stop(world: World) -> None:
    if world.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def check_batch(world: World, batch: int) -> None:
    if batch % world.size:
        raise ConfigError(f"batch={batch} is the global batch and must split evenly over the {world.size} "
                          f"processes; use a multiple of {world.size}, e.g. {batch - batch % world.size or world.size}")


def part(world: World, n: int) -> slice:
    """This rank's contiguous share of n items (the last ranks may get one fewer)."""
    per, extra = divmod(n, world.size)
    start = world.rank * per + min(world.rank, extra)
    return slice(start, start + per + (world.rank < extra))


def barrier(world: World) -> None:
    if world.active:
        import torch.distributed as dist

        dist.barrier()


def _comm_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")  # nccl needs GPU tensors, gloo CPU ones


def broadcast_text(world: World, text: str, device: torch.device) -> str:
    """Rank 0's text on every rank (no pickling, unlike broadcast_object_list)."""
    if not world.active:
        return text
    import torch.distributed as dist

    dev = _comm_device(device)
    data = torch.tensor(list(text.encode()) if world.main else [], dtype=torch.uint8)
    size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    dist.broadcast(size, 0)
    buf = data.to(dev) if world.main else torch.empty(int(size), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def broadcast_int(world: World, value: int, device: torch.device) -> int:
    if not world.active:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(device))
    dist.broadcast(t, 0)
    return int(t)


def mean_over_ranks(world: World, value: torch.Tensor) -> float:
    if not world.active:
        return float(value)
    import torch.distributed as dist

    t = value.detach().double().reshape(1).to(_comm_device(value.device))
    dist.all_reduce(t)
    return float(t) / world.size


def gather_rows(world: World, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's `part(world, n)` of a [n, ...] tensor, put back together in order on every rank."""
    if not world.active:
        return rows
    import torch.distributed as dist

    per = -(-n // world.size)
    dev = _comm_device(rows.device)
    padded = torch.zeros((per, *rows.shape[1:]), dtype=rows.dtype, device=dev)
    padded[:len(rows)] = rows.to(dev)
    pieces = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(pieces, padded)
    sizes = [len(range(n)[part(World(r, world.size), n)]) for r in range(world.size)]
    return torch.cat([p[:k] for p, k in zip(pieces, sizes)]).to(rows.device)


def wrap(model: nn.Module, world: World, device: torch.device, find_unused: bool = False) -> nn.Module:
    """The module the training steps call: DDP over `model` in a world of several, `model` itself otherwise."""
    if not world.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm whose training statistics span the global batch. torch's SyncBatchNorm runs on GPUs only, so
    on the CPU (gloo) pigeon's own does the same arithmetic with autograd-aware all-reduces."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with statistics over every rank's batch: mean, then the variance around it (two passes, as
    a single process computes it, rather than E[x^2] - E[x]^2, which cancels badly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims, c = (0, 2, 3), x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([xf.sum(dims), count]))
        n = totals[c]
        mean = totals[:c] / n
        centred = xf - mean[None, :, None, None]
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n  # biased, as BatchNorm normalises with
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
            unbiased = var.detach() * n / (n - 1).clamp(min=1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


class _SumOverRanks(torch.autograd.Function):
    """Sum a tensor over the ranks, in autograd: every rank's output depends on every rank's input, so the
    gradient that reaches each input is the sum of the gradients of all the outputs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and module.track_running_stats and not isinstance(module, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  device=module.running_mean.device)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module


# --- starting torchrun for the user -------------------------------------------------------------------------

DEVICE_LIST = re.compile(r"^\d+(,\d+)+$")


def device_list(text: str) -> list[int] | None:
    """`--device 0,1,2,3`: the GPUs to train on, one process each; None for any single device."""
    return [int(i) for i in text.split(",")] if DEVICE_LIST.match(text.strip()) else None


def launch(argv: Sequence[str], nproc: int, gpus: Sequence[int] | None = None) -> int:
    """Run `python -m pigeon *argv` in `nproc` processes on this machine through torchrun's own Python API (the
    standard launcher, not one of pigeon's). With `gpus`, the processes see only those GPUs (through
    CUDA_VISIBLE_DEVICES) and process i takes the i-th by its LOCAL_RANK. Returns the exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "pigeon",
                                         *argv])
    try:
        run(args)
    except ChildFailedError as err:
        print(f"pigeon: the run failed on {len(err.failures)} of {nproc} processes; each one's error is above",
              file=sys.stderr)
        return 1
    return 0
