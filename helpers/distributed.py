"""Multi-process training with PyTorch's DistributedDataParallel (DDP), launched by ``torchrun``.

One process per GPU (or per CPU process with the gloo backend), on one machine or many::

    torchrun --nproc_per_node=2 -m helpers train --data-dir DIR --out runs/ddp
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=HOST --master_port=29500 -m helpers train ...

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; without them everything here is a
no-op and training runs in one process. ``cfg.batch_size`` stays the *global* batch: each of the N processes
takes batch_size / N slices of every step, so a run's hyperparameters do not change with the number of GPUs.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import Config


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(cfg: Config) -> tuple[Processes, Config]:
    """Join the process group that ``torchrun`` describes in the environment (once; later calls reuse it) and
    return this process's place plus ``cfg`` pointed at its own GPU. Without torchrun: one process, ``cfg`` as is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), cfg
    procs = Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.torch_device().type == "cuda":
        gpus = torch.cuda.device_count()
        if procs.local_rank >= gpus:
            raise ValueError(f"torchrun started local process {procs.local_rank} but this machine has {gpus} GPU(s): "
                             f"run one process per GPU (--nproc_per_node={gpus}), or pass --device cpu to train "
                             "the processes on the CPU (gloo)")
        torch.cuda.set_device(procs.local_rank)
        cfg = dataclasses.replace(cfg, device=f"cuda:{procs.local_rank}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.torch_device().type == "cuda" else "gloo")
    if cfg.batch_size is not None and cfg.batch_size % (world * cfg.accumulate):
        raise ValueError(f"batch_size {cfg.batch_size} is the global batch and must divide evenly over "
                         f"{world} processes x {cfg.accumulate} micro-batches")
    return procs, cfg


def teardown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, cfg: Config, procs: Processes) -> nn.Module:
    """``model`` (already on its device) in DistributedDataParallel when there are several processes."""
    if not procs.distributed:
        return model
    device_ids = [cfg.torch_device().index] if cfg.torch_device().type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _collective_device() -> torch.device:
    """NCCL reduces GPU tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over(value: float, procs: Processes) -> float:
    """The mean of ``value`` over all processes (e.g. each one's training loss)."""
    if not procs.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / procs.world


def max_over(values: list[float], procs: Processes) -> list[float]:
    """Element-wise maximum over all processes, so that every process takes the same decision (stop, progress)."""
    if not procs.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def from_main(obj: Any, procs: Processes) -> Any:
    """The main process's ``obj`` on every process (e.g. validation scores computed there)."""
    if not procs.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(model: nn.Module, procs: Processes) -> None:
    """Average BatchNorm's running statistics over the processes (in place). DDP copies the main process's
    buffers at each forward pass, but the last step's update stays local; averaging after an epoch leaves every
    process with the same model, and statistics drawn from all of their slices."""
    if not procs.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= procs.world


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()
