"""DeepSpeed ZeRO for the PLE trainer: `accelerate launch --config_file configs/accelerate/zero{2,3}.yaml`.

The trainer's loop is unchanged: each process still computes its share of an optimizer step's
micro-batches. Under ZeRO the DeepSpeed engine, not the trainer, reduces the gradients (into
each process's shard), clips them and steps its sharded optimizer. Because ZeRO communicates
inside forward (stage 3 gathers parameters) and backward (every stage reduces gradients), every
process must run the same number of micro-batches per step: a process whose share ran out gets
an empty micro-batch, for which the trainer's loss runs the computation of a real one at zero
weight. Generation and saving see the full weights, gathered as TRL's
`unwrap_model_for_generation` does.
"""

import contextlib
from pathlib import Path

import torch

from ple.errors import PLEError


def make_accelerator():
    """The Accelerator of a DeepSpeed launch; it also starts the process group.

    Without CUDA accelerate would start DeepSpeed without a backend and count one process; naming gloo
    makes a CPU launch (the CI test) a real multi-process ZeRO run.
    """
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise PLEError('this launch asks for DeepSpeed, which is not installed: pip install "ple[deepspeed]"') from None
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    return Accelerator(kwargs_handlers=handlers)


class ZeroEngine:
    def __init__(self, accelerator, model, optimizer, config):
        from ple.training.policy import step_share

        plugin = accelerator.state.deepspeed_plugin
        world = accelerator.num_processes
        # PLE's config owns the batch sizes and clipping; the accelerate file picks the stage and offloading.
        share, micro = step_share(config, world)
        accumulation = -(-share // micro)
        plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=micro,
            gradient_accumulation_steps=accumulation,
            train_batch_size=micro * accumulation * world,
            gradient_clipping=config.max_grad_norm,
            # PLE's dtype sets the precision: under bf16 the engine keeps bf16 weights (half the memory and traffic
            # of fp32 ones) and fp32 master weights in its optimizer.
            bf16={"enabled": config.dtype == "bfloat16"},
            fp16={"enabled": False},
        )
        self.accelerator = accelerator
        self.world = world
        self.engine, _ = accelerator.prepare(model, optimizer)
        self.engine.train()

    @classmethod
    def prepared(cls, engine, accelerator) -> "ZeroEngine":
        """A DeepSpeed engine another trainer (TRL's) prepared, for gathering its weights."""
        zero = cls.__new__(cls)
        zero.engine, zero.accelerator, zero.world = engine, accelerator, accelerator.num_processes
        return zero

    def micro_batches(self, mine: list, step: list, batch_size: int) -> list[list]:
        """This process's micro-batches, padded with empty ones to the count of the process with the most."""
        most = max(len(step[rank :: self.world]) for rank in range(self.world))
        count = -(-most // batch_size)
        return [mine[i * batch_size : (i + 1) * batch_size] for i in range(count)]

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # ZeRO averages gradients over processes; the trainer's losses are already means over the whole
        # step, so they are scaled up to sum, as the data-parallel path does.
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> None:
        self.engine.step()  # clips, steps the sharded optimizer and zeroes the gradients

    @contextlib.contextmanager
    def full_model(self):
        """The policy with every parameter present (gathered under stage 3), for generation and saving."""
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(self.engine, self.accelerator) as model:
            yield model

    def save_state(self, path: Path) -> None:
        """Every process writes its shard of the optimizer state."""
        self.engine.save_checkpoint(str(path), tag="state", save_latest=False)

    def load_state(self, path: Path) -> None:
        if not path.is_dir():
            raise PLEError(f"cannot resume from {path.parent}: it was not written by a DeepSpeed run")
        try:
            loaded, _ = self.engine.load_checkpoint(str(path), tag="state")
        except Exception as e:
            raise PLEError(
                f"could not load the DeepSpeed state in {path} (resume with the same ZeRO stage and number "
                f"of processes): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        if loaded is None:
            raise PLEError(f"could not load the DeepSpeed state in {path}")
