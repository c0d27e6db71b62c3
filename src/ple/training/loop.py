"""The loop every method trains in, and what the methods' algorithms share.

A method supplies its algorithm: a class built from the run's Harness (ple.training.harness) with either

- `iteration(t) -> (generation rows, metrics)` and `summary_line(metrics)`: PLE, its ablations, distill, sft and
  raft; with `state() -> dict` and `load_state(state)` when it carries something from one iteration to the next
  (checkpointed beside the weights); or
- `run() -> (budget, metrics rows)`: a library trains the whole run (TRL's DPO, RLOO and GRPO); its rows are one per
  iteration, as every method's are in metrics.jsonl.

The loop owns the rest: the run directory (lock, resume, checkpoints), the SFT warm-up, snapshots, trackers, the
progress display, the final model and budget.json."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ple.config import Config
from ple.errors import PLEError, first_line
from ple.methods import get_method
from ple.progress import Progress
from ple.training.harness import Harness, resolve_config
from ple.training.rundir import BUDGET, FINAL, WARMUP, eval_steps, snapshot_dir, snapshot_steps
from ple.training.trackers import Trackers


@dataclass
class RunResult:
    final_model: Path  # the trained model's directory (an adapter with LoRA)
    metrics: list[dict[str, Any]]  # one row per iteration, as in metrics.jsonl


# ---------------------------------------------------------------------------------- what algorithms share
def query_order(n: int, t: int, per_iteration: int, seed: int, shuffle: bool = True) -> list[int]:
    """Dataset indices for iteration t: walk the set in order, one seeded permutation per pass, wrapping."""
    indices = []
    for position in range(t * per_iteration, (t + 1) * per_iteration):
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        indices.append(int(order[offset]))
    return indices


def iteration_seed(seed: int, t: int) -> int:
    """The torch seed of iteration t of a run seeded with `seed`, so that a resumed run draws the same."""
    return seed * 1_000_003 + t + 2  # t = -1 (warm-up) stays distinct from iteration 0


def samples_per_iteration(config: Config) -> int:
    """The policy samples PLE draws per iteration (y and y_p for each query), which every sampling method matches."""
    return 2 * config.queries_per_iteration


def no_valid_reward(t: int, n: int) -> PLEError:
    """What stops a run whose reward scored nothing in an iteration: training on it would change nothing."""
    return PLEError(
        f"iteration {t}: the reward gave no valid score (None, NaN or inf) to any of the {n} queries' answers; "
        "nothing to train on, so the run stops (check the reward on a few of the generations)"
    )


def iteration_rng(seed: int, t: int, *stream: int) -> np.random.Generator:
    """The numpy generator of iteration t's data order (minibatches), the same on a resumed run. `stream` tells
    two uses within one iteration apart."""
    return np.random.default_rng([seed, t + 2, *stream])


def signed(v) -> str:
    """A metric for a progress line: +0.123, or n/a for none."""
    return "n/a" if v is None else f"{v:+.3f}"


def merge_generation_stats(parts: list[dict]) -> dict[str, float]:
    """Generation across processes: tokens add up, the slowest process sets the time."""
    seconds = max(p["gen_seconds"] for p in parts)
    tokens = sum(p["gen_tokens"] for p in parts)
    return {"gen_seconds": seconds, "gen_tokens": tokens, "gen_tokens_per_s": tokens / max(seconds, 1e-9)}


# ---------------------------------------------------------------------------------- the loop
class Loop:
    def __init__(self, harness: Harness, algorithm):
        self.harness, self.algorithm = harness, algorithm
        self.iterative = hasattr(algorithm, "iteration")

    def run(self, resume: bool = False) -> RunResult:
        """Run (or, with `resume`, continue) the method in config.output_dir."""
        h, config = self.harness, self.harness.config
        final = h.run_dir.path / FINAL
        if resume and not self.iterative and (h.run_dir.path / BUDGET).is_file() and final.is_dir():
            return RunResult(final, h.run_dir.metrics())  # a finished whole run: nothing to continue
        trackers = None
        try:
            start = self.open(resume)
            # A whole run's library reports to the trackers itself (TRL's report_to); two runs in one project would
            # be confusing.
            trackers = Trackers(config, h.run_dir.path, h.dist.main and self.iterative)
            units, name = (config.iterations, f"{config.method} iterations") if self.iterative else (1, config.method)
            with (
                Progress(units, name, max(start, 0), disable=not h.dist.main) as progress,
                h.policy.showing(progress),
            ):
                if start == WARMUP:
                    self.sft_warmup(progress)
                    start = 0
                budget = None  # summed from metrics.jsonl
                if self.iterative:
                    self.iterations(start, progress, trackers)
                else:
                    budget = self.whole_run()
                    progress.advance()
            final = h.policy.save_final(h.run_dir.path)
            if h.dist.main:
                h.run_dir.write_budget(budget)
                if config.push_to_hub:
                    push_to_hub(final, config.hub_model_id or h.run_dir.path.resolve().name)
            h.dist.barrier()
            return RunResult(final, h.run_dir.metrics())
        finally:
            if trackers is not None:
                trackers.finish()
            h.run_dir.close()

    def iterations(self, start: int, progress: Progress, trackers: Trackers) -> None:
        """Iterations start .. iterations - 1, each written, logged, snapshotted and checkpointed as it ends."""
        h, config = self.harness, self.harness.config
        for t in range(start, config.iterations):
            torch.manual_seed(iteration_seed(config.seed, t))  # so that a resumed run draws the same
            h.policy.begin_iteration(t)
            rows, metrics = self.algorithm.iteration(t)
            metrics["n_truncated_prompts"] = h.policy.take_truncated_prompts()
            metrics["learning_rate"] = h.policy.learning_rate
            metrics.update(iteration_end(h, t + 1))  # before the checkpoint: a resume never skips a snapshot
            h.run_dir.write_iteration(t, rows, metrics)
            trackers.log(metrics, step=t)
            self.checkpoint(t)
            progress.advance()
            progress.log(self.algorithm.summary_line(metrics))

    def whole_run(self) -> dict[str, Any]:
        """The algorithm's whole run; its budget, with the wall time, and its metrics rows, one per iteration."""
        h = self.harness
        started = time.perf_counter()
        budget, rows = self.algorithm.run()
        for row in rows:
            h.run_dir.write_iteration(row["iteration"], None, row)
        return {**budget, "seconds": time.perf_counter() - started}

    def open(self, resume: bool) -> int:
        """Lock the run directory and pick up a killed run; the first iteration to run (WARMUP for the warm-up)."""
        h = self.harness
        finished = h.run_dir.open(h.config, resume)
        loaded = h.run_dir.load_newest(finished, self.load)
        h.dist.barrier()  # every process has checked the run directory before the main one writes to it
        done = loaded if loaded is not None else WARMUP - 1 if h.config.sft_epochs > 0 else WARMUP
        h.run_dir.start(h.config, done)
        return done + 1

    def load(self, checkpoint: Path, state: dict) -> None:
        """The algorithm's state, then the policy, from a checkpoint (a ValueError: the checkpoint is unreadable)."""
        if hasattr(self.algorithm, "load_state"):
            self.algorithm.load_state(state)
        self.harness.policy.load(checkpoint)

    def checkpoint(self, t: int) -> None:
        """Every process calls it (under ZeRO each writes its optimizer shard); it appears only once complete."""
        h = self.harness
        tmp = h.run_dir.new_checkpoint(t)
        h.policy.save_checkpoint(tmp)
        if h.dist.main:
            state = self.algorithm.state() if hasattr(self.algorithm, "state") else {}
            h.run_dir.commit_checkpoint(tmp, t, state, h.config.keep_checkpoints)

    def sft_warmup(self, progress: Progress) -> None:
        """SFT on the SFT set for sft_epochs epochs, loss on response tokens only; checkpointed as the warm-up."""
        h, config = self.harness, self.harness.config
        torch.manual_seed(iteration_seed(config.seed, WARMUP))
        queries, responses = [r["prompt"] for r in h.sft_set], [r["response"] for r in h.sft_set]
        examples = h.policy.sft_examples(queries, responses)
        h.policy.train_sft(examples, config.sft_epochs, np.random.default_rng([config.seed, 1]), "SFT warm-up")
        truncated = h.policy.take_truncated_prompts()
        if truncated:
            progress.log(f"SFT warm-up: {truncated} of {len(examples)} prompts cut to max_prompt_tokens")
        self.checkpoint(WARMUP)


def iteration_end(h: Harness, done: int) -> dict[str, Any]:
    """What follows a method's `done`-th iteration (at the matching optimizer step for a whole run): the policy's
    snapshot (config.snapshot_every) and its evaluation (config.eval_steps), whose eval/<metric> numbers are
    returned for the iteration's metrics row. Every process calls it."""
    config = h.config
    if done in snapshot_steps(config):
        h.policy.save_weights(snapshot_dir(h.run_dir.path, done))
    return h.evaluation(done) if done in eval_steps(config) else {}


def push_to_hub(final: Path, repo: str) -> None:
    """The final model into the Hub repository `repo` (created if missing); one line when the Hub says no or cannot
    be reached, since the run itself finished and its model is on disk."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(final), commit_message="ple: final model")
    except Exception as e:
        raise PLEError(
            f"push_to_hub: could not upload to {repo} ({first_line(e)}); the run finished and its model is in "
            f"{final}: upload it later with `hf upload {repo} {final}`"
        ) from None


class PLETrainer:
    """Trains config.method (PLE unless `args` says otherwise) on PLE's harness. The arguments follow TRL's
    trainers; each may instead come from `args` (a PLEConfig, as `ple train` reads it from YAML):

    - model: a hub id, a local path or a loaded causal LM (else args.model);
    - args: the PLEConfig (ple.config.Config);
    - reward_funcs: one reward or a list, summed: functions in TRL's contract
      `f(prompts, completions, **columns) -> list[float]`, sequence-classification models, or reward names as in
      the config's `reward` (else args.reward);
    - train_dataset: a `datasets.Dataset` (or a list of dicts) with a `prompt` column (else args.dataset);
    - sft_dataset: the same with `prompt` and `response`, for the warm-up and the sft baseline (else args.sft_dataset);
    - processing_class: the tokenizer (else the model's);
    - peft_config: a peft LoraConfig (else one from args' lora_* fields, when use_lora).

    Everything is read and built here, before any work, so bad input fails in seconds."""

    def __init__(
        self,
        model=None,
        args: Config | None = None,
        reward_funcs=None,
        train_dataset=None,
        sft_dataset=None,
        processing_class=None,
        peft_config=None,
    ):
        config = resolve_config(args, model, reward_funcs, train_dataset, sft_dataset, peft_config)
        algorithm = get_method(config.method).algorithm_class()
        self.harness = Harness(
            config,
            model,
            reward_funcs,
            train_dataset,
            sft_dataset,
            processing_class,
            peft_config,
            samples_itself=getattr(algorithm, "samples_itself", True),
            optimizes_itself=getattr(algorithm, "optimizes_itself", True),
        )
        self.algorithm = algorithm(self.harness)

    def train(self, resume: bool = False) -> RunResult:
        return Loop(self.harness, self.algorithm).run(resume)

    @property
    def config(self) -> Config:
        return self.harness.config

    @property
    def policy(self):
        return self.harness.policy

    @property
    def model(self):
        return self.harness.policy.model

    @property
    def tokenizer(self):
        return self.harness.policy.tokenizer
