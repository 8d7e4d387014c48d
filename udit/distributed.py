"""One code path for a single process, one GPU and torchrun DDP (nanoGPT style).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); without them
we run as rank 0 of 1 and never touch torch.distributed. Backend: nccl on CUDA, gloo on CPU.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from udit.errors import BadValueError, UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank of this process
    world_size: int  # number of processes in the job
    local_rank: int  # rank on this node: picks the CUDA device
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadValueError(f"environment variable {name}={value!r} is not an integer") from None


def pick_device(device: str | None = "auto", *, local_rank: int | None = None) -> torch.device:
    """--device (udit.cli.add_device) -> a torch device: 'auto' (or None) is CUDA when
    available; under torchrun (`local_rank`) a CUDA device is the rank's own GPU."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    if local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(device)


def setup(device: str | None = "auto") -> DistInfo:
    """Join the process group if launched by torchrun; pick this rank's device (pick_device)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise BadValueError(f"RANK={rank} outside [0, WORLD_SIZE={world_size})")
    dev = pick_device(device, local_rank=local_rank if world_size > 1 else None)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of `tensor` over ranks (a copy; the input is left alone)."""
    out = tensor.detach().clone()
    if info.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Elementwise max of `tensor` over ranks (a copy): 'did any rank ...' flags."""
    out = tensor.detach().clone()
    if info.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def rank0_lock(path, info: DistInfo, *, flag: str):
    """One writer per output (udit.outputs.locked): rank 0 holds the lock of `path` for the
    block and every rank learns whether it got it, so all of them refuse together (a requeued
    job can meet its own earlier attempt still running on another node)."""
    from udit.outputs import LockedError, locked

    with contextlib.ExitStack() as stack:
        refused = None
        if info.is_main:
            try:
                stack.enter_context(locked(path, flag=flag))
            except LockedError as err:
                refused = err
        failed = torch.tensor([float(refused is not None)], device=info.device)
        if all_reduce_max(failed, info).item():
            raise refused or LockedError(f"{flag} {path} is locked by another process")
        yield
