"""Multi-process runs (`torchrun` or `accelerate launch`): who I am, and the few collectives PLE needs.

Each process generates and scores its share of the iteration's queries; the records are
gathered so every process sees the whole iteration (the same taus, branches and pairs); each
optimizer step's pairs are split across processes and their gradients summed. Only the
main process writes files. With one process every call is a no-op.
"""

import os

import torch
import torch.distributed as dist

from ple.errors import PLEError

# accelerate sets these for a DeepSpeed or FSDP launch; PLE would silently train full replicas under them.
_SHARDED_LAUNCHES = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_FSDP": "FSDP"}


class Dist:
    def __init__(self):
        for variable, name in _SHARDED_LAUNCHES.items():
            if os.environ.get(variable, "").lower() in ("1", "true"):
                raise PLEError(
                    f"this launch asks for {name}, which PLE does not support yet: every process would hold a "
                    "full replica. Launch with plain data parallelism (accelerate launch --multi_gpu, or torchrun)."
                )
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
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
