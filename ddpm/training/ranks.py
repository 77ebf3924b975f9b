"""Data-parallel training of one network: several processes, one global batch.

`train.gpus: N` starts N processes through torchrun (`ddpm.plumbing.launcher`), one per GPU (or,
on a machine without CUDA, N processes on its CPUs with the gloo backend). Every process holds
the whole network, draws the whole global batch from the run's one seeded generator and keeps
its own slice of it (`Ranks.shard`), so the examples, timesteps and noise are exactly those of
the single-process run; DistributedDataParallel averages the gradients. An N-process run is
therefore the 1-process experiment up to the order of floating-point sums (dropout aside: each
process draws its own masks). Process 0 writes everything; the others only compute.

A process that dies takes the others down: gloo notices the closed connection at the next
collective, NCCL after `COLLECTIVE_TIMEOUT`, and torchrun then stops the rest and reports which
process failed first and how; `launch` ends the command with one `error:` line after it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How long a collective waits for a process that stopped answering (NCCL; gloo sees a closed
# connection at once). A checkpoint or a preview on process 0 takes seconds, far below it.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes that train one network."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        """The process that writes files and prints progress."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    def start(self, device: torch.device) -> None:
        """Join the process group (NCCL on CUDA, gloo on CPU)."""
        if self.parallel and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)

    def stop(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of a global batch (its size divides evenly)."""
        if not self.parallel:
            return batch
        n = batch.shape[0] // self.world
        return batch[self.rank * n : (self.rank + 1) * n]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the processes, in place."""
        if self.parallel:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum of `tensor` over the processes, in place."""
        if self.parallel:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def agree(
        self, signum: int | None, flag: bool, device: torch.device
    ) -> tuple[int | None, bool]:
        """(a signal that any process received, whether any process raised `flag`), the same
        in every process."""
        if not self.parallel:
            return signum, flag
        both = self.max_(torch.tensor([signum or 0, int(flag)], device=device))
        received, raised = both.tolist()
        return received or None, bool(raised)

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`net` under DistributedDataParallel, which averages gradients over the processes."""
        if not self.parallel:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)


SINGLE = Ranks()  # one process: every collective is a no-op
