"""The policy being trained, and what every trainer does with it: encode prompts, sample, take optimizer steps
(data-parallel or under DeepSpeed ZeRO), run SFT, save and load checkpoints."""

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ple.config import Config
from ple.dist import Dist
from ple.errors import PLEError, first_line
from ple.generation import generate
from ple.io import replace_dir, temporary
from ple.logprobs import response_logprobs
from ple.model import autocast, check_context_length, load_policy, merged_lora, save_model
from ple.principles import PromptBuilder
from ple.progress import Progress
from ple.schedule import lr_factor
from ple.training.rundir import FINAL
from ple.vllm_backend import select_backend, start_generator

ZERO_STATE = "deepspeed"  # a checkpoint's subdirectory of DeepSpeed optimizer shards


def step_share(config: Config, world: int) -> tuple[int, int]:
    """(queries per optimizer step on each process, its micro-batch size). batch_size * gradient_accumulation_steps
    queries make one optimizer step whatever the number of processes, so that a config trains alike on one GPU
    and on eight; each process takes an equal share, in micro-batches of at most batch_size."""
    per_step = config.batch_size * config.gradient_accumulation_steps
    if per_step % world:
        raise PLEError(
            f"batch_size*gradient_accumulation_steps={per_step} queries per optimizer step do not split evenly "
            f"over {world} processes; make it a multiple of {world} (raise gradient_accumulation_steps)"
        )
    return per_step // world, min(config.batch_size, per_step // world)


def mean_of_known(values) -> float | None:
    """The mean of the values that are not None (unscored rows); None when there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


class Policy:
    """The model, its tokenizer, prompt builder and optimizer, loaded fresh or from a checkpoint directory.

    Every long step reports its phase to `progress`, the run's display while the loop shows one (`showing`)."""

    def __init__(
        self,
        config: Config,
        dist: Dist,
        device: torch.device,
        principle,
        samples_itself: bool = True,
        optimizes_itself: bool = True,
        model=None,
        tokenizer=None,
        peft_config=None,
    ):
        self.config, self.dist, self.device, self.principle = config, dist, device, principle
        step_share(config, dist.world)  # a batch that does not split over the processes fails before loading
        self.given = {"model": model, "tokenizer": tokenizer, "peft_config": peft_config}  # objects from Python
        self.samples_itself = samples_itself  # False for a method whose library generates (TRL's RLOO, GRPO)
        self.optimizes_itself = optimizes_itself  # False for one whose library owns the optimizer (TRL's trainers)
        self._truncated_prompts = 0  # prompts this process cut to max_prompt_tokens since the last take
        self.skipped_steps = self.skipped_in_a_row = 0  # optimizer steps skipped for a non-finite loss or gradient
        self.where = "training"  # what the optimizer steps are for, to name in an error
        self.progress = Progress(0, "", disable=True)
        self.version = 0  # changes to the weights in this process: what the vLLM engine syncs against
        self.iteration = None  # the iteration being trained (None: the warm-up), which places its steps in the run
        self.learning_rate = config.learning_rate  # of the last optimizer step
        self.zero = self.vllm = None
        self.load(None)

    def load(self, checkpoint: Path | None) -> None:
        """The model and optimizer, fresh (checkpoint None) or as a checkpoint saved them."""
        config = self.config
        if checkpoint is not None:
            self.version += 1  # new weights for the vLLM engine
        if checkpoint is not None and self.zero is not None:
            self.zero.load_state(checkpoint / ZERO_STATE)  # DeepSpeed's own checkpoint holds weights and optimizer
            return
        torch.manual_seed(config.seed)  # LoRA's initial A matrices
        self.model, self.tokenizer = load_policy(config, checkpoint, **self.given)
        check_context_length(self.model, config)
        self.model.to(self.device)
        self.model.train()
        self.builder = PromptBuilder.from_config(self.tokenizer, config, self.principle)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        if self.dist.accelerator is not None and self.optimizes_itself:  # else the library's trainer does (adopt)
            from ple.zero import ZeroEngine

            self.zero = ZeroEngine(self.dist.accelerator, self.model, self.optimizer, config)
        elif checkpoint is not None:
            if not (checkpoint / "optimizer.pt").is_file():
                raise PLEError(f"cannot resume from {checkpoint}: it holds no optimizer.pt (was it a DeepSpeed run?)")
            self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        if (
            self.vllm is None
            and self.samples_itself
            and select_backend(config.generation_backend, self.device, config.vllm_mode) == "vllm"
        ):
            self.vllm = start_generator(config, self.tokenizer, self.dist, self.device)

    # -------------------------------------------------------------- prompts and samples
    def encode(self, queries: list, guided: bool = False) -> list[list[int]]:
        """Prompt ids of the plain (or guided) queries; an overlong one loses its query's oldest tokens, never the
        principle or the template. This process's cut prompts are counted (take_truncated_prompts)."""
        ids, truncated = self.builder.encode(queries, guided, self.config.max_prompt_tokens)
        self._truncated_prompts += truncated
        return ids

    def take_truncated_prompts(self) -> int:
        """The prompts every process cut to max_prompt_tokens since the last call (every process calls it)."""
        taken, self._truncated_prompts = self._truncated_prompts, 0
        return sum(self.dist.gather([taken]))

    @contextlib.contextmanager
    def showing(self, progress: Progress):
        """Report phases to `progress` within the block."""
        before, self.progress = self.progress, progress
        try:
            yield
        finally:
            self.progress = before

    def sample(self, ids: list[list[int]]):
        """One sampled response per prompt, in one batched call: (samples, stats)."""
        config = self.config
        self.progress.phase("generating")
        started = time.perf_counter()
        # A process with no prompts (more processes than queries) still enters full_model: gathering the
        # weights under ZeRO-3 is collective.
        if self.vllm is not None:
            with self.full_model() as model:
                self.vllm.sync(model, self.version)
            seed = int(torch.randint(0, 2**31 - 1, ()).item())  # drawn from the iteration's seeded stream
            samples = self.vllm.generate(
                ids, config.max_new_tokens, config.temperature, config.top_p, config.top_k, seed
            )
        else:
            # On a CPU the adapter is merged for the call (one matmul per layer instead of three); on a GPU the
            # copy of the base weights that keeps this exact would cost memory that vLLM puts to better use.
            merge = merged_lora if self.device.type == "cpu" else contextlib.nullcontext
            with self.full_model() as model, merge(model) as model, autocast(config.dtype, self.device):
                samples = generate(
                    model,
                    self.tokenizer,
                    ids,
                    config.max_new_tokens,
                    config.temperature,
                    config.top_p,
                    config.top_k,
                    config.generation_batch_size,
                )
        seconds = time.perf_counter() - started
        return samples, {"gen_seconds": seconds, "gen_tokens": sum(len(x.response_ids) for x in samples)}

    # -------------------------------------------------------------- training
    def sft_examples(self, queries: list, responses: list[str]) -> list[tuple[list[int], list[int]]]:
        """(plain prompt ids, response ids + EOS) for queries and response texts, the same on every process (each
        takes its share of a step's examples), so the main process alone counts the cut prompts."""
        ids, truncated = self.builder.encode(queries, False, self.config.max_prompt_tokens)
        if self.dist.main:
            self._truncated_prompts += truncated
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return [(p, self.tokenizer(r, add_special_tokens=False)["input_ids"] + eos) for p, r in zip(ids, responses)]

    def train_sft(self, examples: list[tuple], epochs: int, rng: np.random.Generator, phase: str) -> dict[str, Any]:
        """Supervised fine-tuning on (prompt ids, response ids) examples: mean token NLL of the responses."""

        def micro_loss(micro: list[tuple], step: list[tuple]) -> tuple[torch.Tensor, float]:
            with autocast(self.config.dtype, self.device):
                sum_logp, _ = response_logprobs(self.train_model, micro, self.tokenizer.pad_token_id)
            nll = -sum_logp.sum()
            # the mean token NLL over the step; the micro-batch's own mean is what is reported
            return nll / sum(len(response) for _, response in step), nll.item() / sum(len(r) for _, r in micro)

        started, skipped = time.perf_counter(), self.skipped_steps
        steps, losses = self.train_epochs(examples, epochs, rng, micro_loss, phase)
        skipped = self.skipped_steps - skipped
        return {
            "loss": mean_of_known(losses),
            "optimizer_steps": steps - skipped,
            "skipped_steps": skipped,
            "train_seconds": time.perf_counter() - started,
        }

    def train_epochs(self, items: list, epochs: int, rng: np.random.Generator, micro_loss, phase: str):
        """Shuffled passes over `items` in optimizer steps of batch_size * gradient_accumulation_steps items over
        all processes (step_share). Each process runs its share of a step in micro-batches, the gradients are
        summed across processes, and every process takes the same optimizer step.

        `micro_loss(micro-batch, step) -> (loss, record)`: the micro-batch's share of the step's loss, and what to
        report of it. Returns (the number of steps, the records of every micro-batch, in order)."""
        per_step = self.config.batch_size * self.config.gradient_accumulation_steps
        steps = epochs * math.ceil(len(items) / per_step)
        self.progress.phase(phase, total=steps)
        self.where = phase
        records, done = [], 0
        for _ in range(epochs):
            order = rng.permutation(len(items))
            for start in range(0, len(items), per_step):
                self.set_learning_rate(done / steps)
                records += self.optimizer_step([items[i] for i in order[start : start + per_step]], micro_loss)
                done += 1
                self.progress.step()
        return steps, records

    def begin_iteration(self, t: int) -> None:
        """Iteration t's optimizer steps follow; where they are in the run sets their learning rate."""
        self.iteration = t

    def set_learning_rate(self, through_iteration: float) -> None:
        """The scheduled learning rate (ple.schedule.lr_factor) of a step `through_iteration` of the way through
        the current iteration; the warm-up keeps learning_rate."""
        config = self.config
        if self.iteration is None:
            return
        progress = (self.iteration + through_iteration) / config.iterations
        self.learning_rate = config.learning_rate * lr_factor(progress, config.lr_scheduler_type, config.warmup_ratio)
        optimizer = self.zero.engine.optimizer if self.zero is not None else self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = self.learning_rate

    def optimizer_step(self, step: list, micro_loss) -> list:
        """This process's share of `step` in micro-batches, then one optimizer step on every process; the
        micro-batches' records. A step whose loss or gradient is not finite is skipped; max_nonfinite_steps of them
        in a row stop the run."""
        config = self.config
        mine = self.dist.shard(step)
        records = []
        if self.zero is not None:
            micro_batches = self.zero.micro_batches(mine, step, config.batch_size)
            finite = True
            for k, micro in enumerate(micro_batches):
                if micro:
                    loss, record = micro_loss(micro, step)
                    records.append(record)
                else:  # idle (see ple.zero): the computation of a real micro-batch, at zero weight
                    loss = micro_loss(step[:1], step)[0] * 0.0
                finite &= bool(torch.isfinite(loss))
                self.zero.backward(loss, last=k == len(micro_batches) - 1)
            if not all(self.dist.gather([finite])):  # the engine steps as it reduces: stop before it does
                raise PLEError(f"a non-finite loss ({self.where}) stopped the run before its step; {self._hint()}")
            self.zero.step()
        else:
            for start in range(0, len(mine), config.batch_size):
                loss, record = micro_loss(mine[start : start + config.batch_size], step)
                loss.backward()
                records.append(record)
            self.dist.sum_gradients(self.trainable)
            # A NaN loss makes NaN gradients, so one finite norm vouches for both.
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, config.max_grad_norm or math.inf)
            if not torch.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                self.skipped_in_a_row += 1
                if self.skipped_in_a_row >= config.max_nonfinite_steps:
                    raise PLEError(
                        f"{self.skipped_in_a_row} optimizer steps in a row had a non-finite loss or gradient "
                        f"({self.where}); each was skipped, so none reached the weights; {self._hint()}"
                    )
                return records
            self.skipped_in_a_row = 0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        return records

    def _hint(self) -> str:
        return f"check the rewards' scale and the learning rate ({self.config.learning_rate:g})"

    def adopt(self, trainer) -> None:
        """The policy as a library's trainer (TRL's, transformers') left it: its model, and under DeepSpeed its
        engine, through which the weights are gathered for saving."""
        self.model = trainer.model
        self.version += 1  # new weights for the vLLM engine
        if trainer.is_deepspeed_enabled:
            from ple.zero import ZeroEngine

            self.zero = ZeroEngine.prepared(trainer.model_wrapped, trainer.accelerator)

    def full_model(self):
        """A context giving the policy with all its weights present, for generation and saving."""
        return self.zero.full_model() if self.zero is not None else contextlib.nullcontext(self.model)

    @property
    def train_model(self):
        """What the losses call: the DeepSpeed engine under ZeRO, else the policy itself."""
        return self.zero.engine if self.zero is not None else self.model

    # -------------------------------------------------------------- saving
    def save_checkpoint(self, tmp: Path) -> None:
        """Model and optimizer state into `tmp`. Every process calls it: under ZeRO each writes its optimizer
        shard, and the main process writes the rest."""
        self.dist.barrier()
        with self.full_model() as model:
            if self.dist.main:
                save_model(model, self.tokenizer, tmp)
        if self.zero is not None:
            self.zero.save_state(tmp / ZERO_STATE)
        elif self.dist.main:
            try:
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            except RuntimeError as e:  # torch's writer reports a full disk as a RuntimeError, not an OSError
                raise PLEError(
                    f"cannot write the checkpoint's optimizer state in {tmp.parent} ({first_line(e)}); the finished "
                    "checkpoints are whole: free space, then resume"
                ) from None
        self.dist.barrier()

    def save_weights(self, path: Path, merge: bool = False, dtype: str | None = None) -> None:
        """The policy's weights (no optimizer) into `path`: written beside it and renamed, so a kill never leaves a
        half-saved model. Every process calls it (under ZeRO-3 they all take part in gathering the weights); the
        main one writes."""
        tmp = temporary(path)
        with self.full_model() as model:
            if self.dist.main:
                shutil.rmtree(tmp, ignore_errors=True)
                save_model(model, self.tokenizer, tmp, merge=merge, dtype=dtype)
                replace_dir(tmp, path)

    def save_final(self, run_dir: Path) -> Path:
        """run_dir/final, LoRA merged in when config.merge_lora, a full model in the run's dtype."""
        final = run_dir / FINAL
        self.save_weights(final, merge=self.config.merge_lora, dtype=self.config.dtype)
        return final
