"""What every method's trainer shares: the config, the queries, the reward, the policy and the run directory, and
the loop that resumes, warms up, runs the iterations and saves the final model. PLE (ple.trainer) and the
baselines (ple.baselines) each write only their own `iteration`."""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ple.config import Config, load_config
from ple.data import load_task_rows, query_rows, sft_rows
from ple.dist import Dist
from ple.errors import PLEError
from ple.methods import get_method
from ple.model import resolve_device
from ple.principles import load_principle
from ple.progress import Progress
from ple.rewards import ClassifierReward, RunningStd, check_reward, config_reward, score, summed_reward
from ple.training.policy import Policy
from ple.training.rundir import WARMUP, RunDir, snapshot_dir, snapshot_steps
from ple.training.trackers import Trackers


@dataclass
class TrainOutput:
    final_model: Path  # the trained model's directory (an adapter with LoRA)
    metrics: list[dict[str, Any]]  # one row per iteration, as in metrics.jsonl


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


IN_MEMORY = "<in memory>"  # what the config records as the dataset of a run given a Dataset object


def resolve_config(args: Config | None, model, reward_funcs, train_dataset, sft_dataset, peft_config) -> Config:
    """`args` with what the other arguments say, its method preset applied and validated (as `ple train` does)."""
    defaults = Config().to_dict()
    values = {k: v for k, v in (args or Config()).to_dict().items() if v != defaults[k]}
    if reward_funcs is not None and "reward" not in get_method(values.get("method", "ple")).preset:
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        values["reward"] = funcs if all(isinstance(f, str) for f in funcs) else IN_MEMORY  # names go in config.yaml
    if model is not None:
        values["model"] = str(model) if isinstance(model, (str, Path)) else model.name_or_path
    if train_dataset is not None:
        values["dataset"] = IN_MEMORY
    if sft_dataset is not None:
        values["sft_dataset"] = IN_MEMORY
    if peft_config is not None:
        values["use_lora"] = True
    return load_config(overrides=values)


def dataset_rows(dataset, name: str) -> list[dict] | None:
    """The rows of a `datasets.Dataset` or a list of dicts, checked as a file's rows are; None for no dataset."""
    if dataset is None:
        return None
    rows = [dict(row) for row in dataset]
    if not rows:
        raise PLEError(f"{name} holds no rows")
    return rows


def make_reward(reward_funcs, config: Config, device):
    """One reward function: the sum of `reward_funcs` (functions, sequence-classification models or reward names),
    or the config's reward when there are none; None for a method that needs no reward."""
    if reward_funcs is None or config.reward != IN_MEMORY:  # names (resolve_config), or none for distill
        return config_reward(config.reward, config, device) if config.reward is not None else None
    parts = [
        config_reward(f, config, device)
        if isinstance(f, str)
        else ClassifierReward.from_model(f, device=device)
        if hasattr(f, "config") and hasattr(f, "forward")
        else f
        for f in (reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs])
    ]
    return parts[0] if len(parts) == 1 else summed_reward(parts)


class Trainer:
    """A method's trainer: subclasses define `iteration(t) -> (generation rows, metrics)` and `summary_line`.

    The arguments follow TRL's trainers; each may instead come from `args` (a PLEConfig, as `ple train` reads it
    from YAML):

    - model: a hub id, a local path or a loaded causal LM (else args.model);
    - args: the PLEConfig (ple.config.Config);
    - reward_funcs: one reward or a list, summed: functions in TRL's contract
      `f(prompts, completions, **columns) -> list[float]`, sequence-classification models, or reward names as in
      the config's `reward` (else args.reward);
    - train_dataset: a `datasets.Dataset` (or a list of dicts) with a `prompt` column (else args.dataset);
    - sft_dataset: the same with `prompt` and `response`, for the warm-up and the sft baseline (else args.sft_dataset);
    - processing_class: the tokenizer (else the model's);
    - peft_config: a peft LoraConfig (else one from args' lora_* fields, when use_lora).

    Everything is read and built here, before any work, so bad input fails in seconds: the queries, the SFT set,
    the reward (checked on the first query) and the policy."""

    samples_itself = True  # False for a trainer whose library generates (TRL's RLOO)

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
        config = self.config = resolve_config(args, model, reward_funcs, train_dataset, sft_dataset, peft_config)
        self.dist = Dist()
        self.device = self.dist.device(resolve_device(config.device))
        self.principle = load_principle(config.principle, config.principle_name)
        column = config.prompt_column if config.task == "none" else "prompt"
        self.queries = query_rows(
            dataset_rows(train_dataset, "train_dataset")
            or load_task_rows(config.dataset, config.dataset_split, config.dataset_config, config.task, config.seed),
            config.dataset,
            column,
        )
        self.sft_set = []
        if config.sft_epochs > 0 or get_method(config.method).needs_sft_set:
            self.sft_set = sft_rows(
                dataset_rows(sft_dataset, "sft_dataset")
                or load_task_rows(config.sft_dataset, config.sft_split, None, config.task, config.seed),
                config.sft_dataset,
                column,
            )
        if config.queries_per_iteration > len(self.queries) and self.dist.main:
            print(
                f"ple: warning: queries_per_iteration={config.queries_per_iteration} is more than the "
                f"{len(self.queries)} queries in {config.dataset}; an iteration repeats queries",
                file=sys.stderr,
            )
        self.reward_fn = make_reward(reward_funcs, config, self.device)
        if self.reward_fn is not None:
            check_reward(self.reward_fn, self.queries[0])
        self.reward_std = RunningStd()
        self.run_dir = RunDir(Path(config.output_dir), self.dist.main)
        loaded = model if model is not None and not isinstance(model, (str, Path)) else None
        self.policy = Policy(
            config, self.dist, self.device, self.principle, self.samples_itself, loaded, processing_class, peft_config
        )

    @property
    def model(self):
        return self.policy.model

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    # -------------------------------------------------------------- the loop
    def train(self, resume: bool = False) -> TrainOutput:
        """Run (or, with `resume`, continue) the method in config.output_dir."""
        config = self.config
        trackers = None
        try:
            start = self.open_run(resume)
            trackers = Trackers(config, self.run_dir.path, self.dist.main)
            with Progress(
                total=config.iterations,
                description=f"{config.method} iterations",
                completed=max(start, 0),
                disable=not self.dist.main,
            ) as progress:
                self.policy.progress = progress
                if start == WARMUP:
                    self.sft_warmup()
                    start = 0
                for t in range(start, config.iterations):
                    torch.manual_seed(iteration_seed(config.seed, t))  # so that a resumed run draws the same
                    rows, metrics = self.iteration(t)
                    self.run_dir.write_iteration(t, rows, metrics)
                    trackers.log(metrics, step=t)
                    if t + 1 in snapshot_steps(config):  # before the checkpoint: a resume never skips one
                        self.policy.save_weights(snapshot_dir(self.run_dir.path, t + 1))
                    self.checkpoint(t)
                    progress.advance()
                    progress.log(self.summary_line(metrics))
            final = self.policy.save_final(self.run_dir.path)
            if self.dist.main:
                self.run_dir.write_budget()
            self.dist.barrier()
            return TrainOutput(final, self.run_dir.metrics())
        finally:
            if trackers is not None:
                trackers.finish()
            self.run_dir.close()

    def open_run(self, resume: bool) -> int:
        """Lock the run directory and pick up a killed run; the first iteration to run (WARMUP for the warm-up)."""
        finished = self.run_dir.open(self.config, resume)
        loaded = self.run_dir.load_newest(finished, self.policy.load)
        self.dist.barrier()  # every process has checked the run directory before the main one writes to it
        if loaded is not None:
            done, state = loaded
            self.reward_std = RunningStd(**state["reward_std"])
        else:
            done = WARMUP - 1 if self.config.sft_epochs > 0 else WARMUP
        self.run_dir.start(self.config, done)
        return done + 1

    def checkpoint(self, t: int) -> None:
        """Every process calls it (under ZeRO each writes its optimizer shard); it appears only once complete."""
        tmp = self.run_dir.new_checkpoint(t)
        self.policy.save_checkpoint(tmp)
        if self.dist.main:
            self.run_dir.commit_checkpoint(
                tmp, t, {"reward_std": self.reward_std.state()}, self.config.keep_checkpoints
            )

    def sft_warmup(self) -> None:
        """SFT on the SFT set for sft_epochs epochs, loss on response tokens only; checkpointed as the warm-up."""
        config = self.config
        torch.manual_seed(iteration_seed(config.seed, WARMUP))
        queries, responses = [r["prompt"] for r in self.sft_set], [r["response"] for r in self.sft_set]
        examples = self.policy.sft_examples(queries, responses)
        self.policy.train_sft(examples, config.sft_epochs, np.random.default_rng([config.seed, 1]), "SFT warm-up")
        self.checkpoint(WARMUP)

    def iteration(self, t: int) -> tuple[list[dict], dict[str, Any]]:
        """Iteration t of the method, with torch's generator already seeded for it: (generation rows, metrics)."""
        raise NotImplementedError

    def summary_line(self, metrics: dict) -> str:
        raise NotImplementedError

    # -------------------------------------------------------------- shared steps
    def score_rows(self, rows: list[dict], completions: list[str]) -> tuple[list[float | None], float]:
        """The training reward of each completion against its row's plain query (other columns passed along)."""
        if not rows:
            return [], 0.0
        self.policy.progress.phase("scoring")
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        started = time.perf_counter()
        scores = score(self.reward_fn, [r["prompt"] for r in rows], completions, **columns)
        return scores, time.perf_counter() - started
