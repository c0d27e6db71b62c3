"""Multi-process runs (`torchrun` or `accelerate launch`): who I am, and the few collectives PLE needs.

Each process generates and scores its share of the iteration's queries; the records are
gathered so every process sees the whole iteration (the same taus, branches and pairs); each
optimizer step's pairs are split across processes and their gradients summed (by the trainer,
or by DeepSpeed under a ZeRO launch, see ple.zero). Only the main process writes files, apart
from DeepSpeed's optimizer shards. With one process every call is a no-op.
"""

import os

import torch
import torch.distributed as dist

from ple.errors import PLEError


def _launch_asks_for(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("1", "true")  # set by accelerate launch from its config


class Dist:
    def __init__(self):
        if _launch_asks_for("ACCELERATE_USE_FSDP"):
            raise PLEError(
                "this launch asks for FSDP, which PLE does not support: every process would hold a full replica. "
                "Use DeepSpeed ZeRO (configs/accelerate/zero3.yaml) or plain data parallelism."
            )
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.accelerator = None  # set under DeepSpeed, whose engine then owns gradients and optimizer
        if _launch_asks_for("ACCELERATE_USE_DEEPSPEED"):
            from ple.zero import make_accelerator

            self.accelerator = make_accelerator()
        elif self.world > 1 and not dist.is_initialized():
            # NCCL needs a GPU per process; with fewer GPUs (a 2-process check on one GPU) gloo still works.
            enough_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= self.world
            dist.init_process_group(os.environ.get("PLE_DIST_BACKEND") or ("nccl" if enough_gpus else "gloo"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """Each process takes its own GPU."""
        if self.world > 1 and requested.type == "cuda":
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return requested

    def shard(self, items: list) -> list:
        return items[self.rank :: self.world]

    def gather(self, items: list) -> list:
        """Concatenate every process's list (small Python objects), in rank order."""
        if self.world == 1:
            return items
        parts: list = [None] * self.world
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
