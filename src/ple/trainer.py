"""The PLE trainer: one iteration reads like PLE-SPEC.md section 2.

tau_t  = schedule(t)
x      = next queries_per_iteration queries
y, y_p = pi(.|x), pi(.|p + x)             one batched generate call
s, s_p = r(x, y), r(x, y_p)                always against plain x
branch = rank | wsft | skip                 by gap = s_p - s and tau_t
train on (x -> y_p, y) with the branch's loss, then log, write and checkpoint
"""

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ple.config import Config, save_config
from ple.data import load_task_rows, query_rows, sft_rows
from ple.dist import Dist
from ple.errors import PLEError, first_line
from ple.generation import generate
from ple.io import atomic_write_jsonl, atomic_write_text, read_jsonl, replace_dir, strict_json
from ple.losses import assign_branch, ple_loss, sft_weights, wsft_temperature
from ple.model import (
    autocast,
    load_policy,
    merged_lora,
    resolve_device,
    response_logprobs,
    save_model,
    shared_prompt_logprobs,
)
from ple.principles import PromptBuilder, load_principle
from ple.progress import Progress
from ple.rewards import RunningStd, check_reward, config_reward, score
from ple.rundir import check_inputs_unchanged, lock_run_dir, write_input_hashes
from ple.schedule import threshold
from ple.vllm_backend import select_backend

WARMUP = -1  # iteration index of the SFT warm-up checkpoint
ZERO_STATE = "deepspeed"  # a checkpoint's subdirectory of DeepSpeed optimizer shards


@dataclass
class Pair:
    """One query's training example: plain-x prompt ids, both responses, and its branch."""

    prompt_ids: list[int]
    guided_ids: list[int]
    plain_ids: list[int]
    branch: str
    winner: str | None
    s: float
    s_p: float


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


def mean_of_known(values) -> float | None:
    """The mean of the values that are not None (unscored rows); None when there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


class PLETrainer:
    samples_itself = True  # False for a trainer whose library does its own generation (TRL's RLOO)

    def __init__(self, config: Config, reward_fn=None):
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.dist = Dist()
        self.device = self.dist.device(resolve_device(config.device))
        self.principle = load_principle(config.principle, config.principle_name)
        column = config.prompt_column if config.task == "none" else "prompt"
        self.queries = query_rows(
            load_task_rows(config.dataset, config.dataset_split, config.dataset_config, config.task, config.seed),
            config.dataset,
            column,
        )
        self.sft_set = (
            sft_rows(
                load_task_rows(config.sft_dataset, config.sft_split, None, config.task, config.seed),
                config.sft_dataset,
                column,
            )
            if config.sft_epochs > 0 or config.method == "sft"
            else []
        )
        if reward_fn is None and config.reward is not None:
            reward_fn = config_reward(config.reward, config, self.device)
        self.reward_fn = reward_fn
        if reward_fn is not None:
            check_reward(reward_fn, self.queries[0])
        self.reward_std = RunningStd()
        self.truncated_prompts = 0  # prompts this process cut to max_prompt_tokens in the current iteration
        self.skipped_steps = self.skipped_in_a_row = 0  # optimizer steps skipped for a non-finite loss or gradient
        self.where = "training"  # what the optimizer steps are for, to name in an error
        self.model = self.tokenizer = self.optimizer = None
        self._lock = None  # the run directory's lock, held by the main process while it trains

    # ------------------------------------------------------------------ main loop
    def train(self, resume: bool = False) -> Path:
        try:
            return self._train(resume)
        finally:
            self._unlock()

    def _train(self, resume: bool) -> Path:
        config = self.config
        start = self._prepare_run_dir(resume)
        with Progress(
            total=config.iterations,
            description=f"{config.method} iterations",
            completed=max(start, 0),
            disable=not self.dist.main,
        ) as progress:
            self.progress = progress
            if start == WARMUP:
                self.sft_warmup()
                start = 0
            for t in range(start, config.iterations):
                metrics = self.iteration(t)
                progress.advance()
                progress.log(self.summary_line(metrics))
        self._save_final()
        if self.dist.main:
            write_budget(self.run_dir)
        self.dist.barrier()
        return self.run_dir / "final"

    def _save_final(self) -> None:
        """final/: written beside it and renamed, so a kill never leaves a half-saved model. Every process
        calls it (under ZeRO-3 they all take part in gathering the weights); the main one writes."""
        tmp = self.run_dir / ".final.tmp"
        with self.full_model() as model:
            if self.dist.main:
                shutil.rmtree(tmp, ignore_errors=True)
                save_model(model, self.tokenizer, tmp, merge=self.config.merge_lora)
                replace_dir(tmp, self.run_dir / "final")

    def iteration(self, t: int) -> dict[str, Any]:
        config = self.config
        torch.manual_seed(iteration_seed(config.seed, t))
        started = time.perf_counter()
        self.truncated_prompts = 0
        indices = query_order(len(self.queries), t, config.queries_per_iteration, config.seed, config.shuffle)
        rows = [self.queries[i] for i in indices]

        mine = self.dist.shard(list(range(len(rows))))  # this process's queries (all of them in a 1-process run)
        plain, guided, plain_ids, gen_stats = self.generate_pairs([rows[i] for i in mine])
        s, s_p, score_seconds = self.score_pairs(
            [rows[i] for i in mine], [g.text for g in plain], [g.text for g in guided]
        )
        # Every process needs the whole iteration, so that taus, branches and pairs agree everywhere.
        gathered = sorted(self.dist.gather(list(zip(mine, plain, guided, plain_ids, s, s_p))), key=lambda r: r[0])
        _, plain, guided, plain_ids, s, s_p = (list(column) for column in zip(*gathered))
        gen_stats = merge_generation_stats(self.dist.gather([gen_stats]))
        scale = self._reward_scale(s + s_p)
        gaps = [None if a is None or b is None else (b - a) / scale for a, b in zip(s, s_p)]
        tau = threshold(t, config.schedule, config.tau0, config.alpha, config.tau_quantile, gaps)
        temperature = wsft_temperature(config.wsft_temperature, tau)
        branches = [assign_branch(g, tau, config.negative_gap) for g in gaps]

        # A query whose branch has coefficient 0 (an ablation) carries no loss, so it is not trained on and not
        # counted in the step's mean: the ablation keeps the full step size.
        coefficient = {"rank": config.rank_coef, "wsft": config.sft_coef, "skip": 0.0}
        pairs = [
            Pair(x_ids, y_p.response_ids, y.response_ids, branch, winner, a / scale, b / scale)
            for x_ids, y, y_p, a, b, (branch, winner) in zip(plain_ids, plain, guided, s, s_p, branches)
            if coefficient[branch] > 0
        ]
        train_stats = self.train_on(pairs, t, temperature)

        generation_rows = [
            {
                "iteration": t,
                "index": i,
                "query": row["prompt"],
                "prompt": self.builder.render(row["prompt"]),
                "principle_prompt": self.builder.render(row["prompt"], True),
                "y": y.text,
                "y_p": y_p.text,
                "s": a,
                "s_p": b,
                "gap": g,
                "branch": branch,
                "winner": winner,
                "tau": tau,
            }
            for i, row, y, y_p, a, b, g, (branch, winner) in zip(indices, rows, plain, guided, s, s_p, gaps, branches)
        ]
        counts = {name: sum(b == name for b, _ in branches) for name in ("rank", "wsft", "skip")}
        larger_weight = self._larger_wsft_weights([(p.s_p, p.s) for p in pairs if p.branch == "wsft"], temperature)
        metrics = {
            "iteration": t,
            "tau": tau,
            "mean_s": mean_of_known(s),
            "mean_s_p": mean_of_known(s_p),
            "mean_gap": mean_of_known(gaps),
            **{f"frac_{k}": v / len(rows) for k, v in counts.items()},
            **{f"n_{k}": v for k, v in counts.items()},
            "n_rank_plain_wins": sum(w == "plain" for _, w in branches),
            "n_trained": len(pairs),
            "n_invalid_reward": sum(g is None for g in gaps),
            "n_truncated_prompts": sum(self.dist.gather([self.truncated_prompts])),
            "reward_scale": scale,
            "wsft_temperature": temperature,
            "wsft_weight_max_mean": mean_of_known(larger_weight),
            "wsft_weight_max_min": min(larger_weight, default=None),
            "samples": 2 * len(rows),
            "reward_calls": 2 * len(rows),
            **gen_stats,
            "score_seconds": score_seconds,
            **train_stats,
            "seconds": time.perf_counter() - started,
            "processes": self.dist.world,
        }
        self._write_iteration(t, generation_rows, metrics)
        return metrics

    def summary_line(self, m: dict) -> str:
        return _summary_line(m)

    # ------------------------------------------------------------------ steps
    def generate_pairs(self, rows: list[dict]):
        """y ~ pi(.|x) and y_p ~ pi(.|p + x) for every query, in one batched call."""
        queries = [r["prompt"] for r in rows]
        plain_ids = self.encode(queries)
        samples, stats = self.sample(plain_ids + self.encode(queries, guided=True))
        n = len(rows)
        return samples[:n], samples[n:], plain_ids, stats

    def encode(self, queries: list, guided: bool = False) -> list[list[int]]:
        """Prompt ids of the plain (or guided) queries; an overlong one loses its query's oldest tokens, never the
        principle or the template. This process's cut prompts are counted in truncated_prompts."""
        ids, truncated = self.builder.encode(queries, guided, self.config.max_prompt_tokens)
        self.truncated_prompts += truncated
        return ids

    def sample(self, ids: list[list[int]]):
        """One sampled response per prompt, in one batched call: (samples, stats)."""
        config = self.config
        self.progress.phase("generating")
        started = time.perf_counter()
        # A process with no prompts (more processes than queries) still enters full_model: gathering the
        # weights under ZeRO-3 is collective.
        if self.vllm is not None:
            with self.full_model() as model:
                self.vllm.sync(model, self.policy_version)
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
        return samples, _generation_stats(samples, time.perf_counter() - started)

    def score_pairs(self, rows: list[dict], plain: list[str], guided: list[str]):
        """s = r(x, y), s_p = r(x, y_p): both against the plain query, in one reward call."""
        n = len(rows)
        scores, seconds = self.score_rows(rows + rows, plain + guided)
        return scores[:n], scores[n:], seconds

    def score_rows(self, rows: list[dict], completions: list[str]) -> tuple[list[float | None], float]:
        """The training reward of each completion against its row's plain query (other columns passed along)."""
        if not rows:
            return [], 0.0
        self.progress.phase("scoring")
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        started = time.perf_counter()
        scores = score(self.reward_fn, [r["prompt"] for r in rows], completions, **columns)
        return scores, time.perf_counter() - started

    def train_on(self, pairs: list[Pair], t: int, temperature: float) -> dict[str, Any]:
        """epochs_per_iteration passes over this iteration's pairs; the weighted-SFT softmax at `temperature`."""
        config = self.config
        totals = {"loss": [], "rank_loss": [], "wsft_loss": []}
        tokens = 0

        def micro_loss(micro: list[Pair], step: list[Pair]) -> torch.Tensor:
            nonlocal tokens
            losses, n_tokens = self.pair_losses(micro or step[:1], temperature)
            if not micro:  # idle under ZeRO: the computation of a real micro-batch, at zero weight
                return losses["loss"].sum() * 0.0
            tokens += n_tokens
            for key, values in losses.items():
                totals[key] += values.detach().tolist()
            return losses["loss"].sum() / len(step)  # the mean over the optimizer step's queries

        started, skipped = time.perf_counter(), self.skipped_steps
        steps = self._train_epochs(
            pairs,
            config.epochs_per_iteration,
            np.random.default_rng([config.seed, t + 2, 7]),
            micro_loss,
            f"training (iteration {t})",
        )
        seconds = time.perf_counter() - started
        totals = {key: self.dist.gather(values) for key, values in totals.items()}
        return {
            "loss": mean_of_known(totals["loss"]),
            "rank_loss": mean_of_known(v for v in totals["rank_loss"] if not math.isnan(v)),
            "wsft_loss": mean_of_known(v for v in totals["wsft_loss"] if not math.isnan(v)),
            "optimizer_steps": steps - (self.skipped_steps - skipped),
            "skipped_steps": self.skipped_steps - skipped,
            "train_seconds": seconds,
            "train_tokens_per_s": sum(self.dist.gather([tokens])) / max(seconds, 1e-9),
        }

    def pair_losses(self, pairs: list[Pair], temperature: float) -> tuple[dict[str, torch.Tensor], int]:
        """Per-query losses of a micro-batch (ple.losses.ple_loss): l(y_p|x) and l(y|x), with x run once for both."""
        config = self.config
        with autocast(config.dtype, self.device):
            sum_logp, n_tokens = shared_prompt_logprobs(
                self.train_model,
                [p.prompt_ids for p in pairs],
                [[p.guided_ids for p in pairs], [p.plain_ids for p in pairs]],
                self.tokenizer.pad_token_id,
            )
        n, device = len(pairs), sum_logp.device
        losses = ple_loss(
            sum_logp[:n],
            n_tokens[:n],
            sum_logp[n:],
            n_tokens[n:],
            torch.tensor([p.s_p for p in pairs], device=device, dtype=torch.float64),
            torch.tensor([p.s for p in pairs], device=device, dtype=torch.float64),
            torch.tensor([p.branch == "rank" for p in pairs], device=device),
            torch.tensor([p.winner == "guided" for p in pairs], device=device),
            rank_kind=config.rank_loss,
            margin=config.margin,
            beta=config.beta,
            rank_coef=config.rank_coef,
            sft_coef=config.sft_coef,
            rank_sft_coef=config.rank_sft_coef,
            temperature=temperature,
            all_weight_on_guided=config.sft_weights == "guided",
        )
        return losses, sum(2 * len(p.prompt_ids) + len(p.guided_ids) + len(p.plain_ids) for p in pairs)

    def _larger_wsft_weights(self, rewards: list[tuple[float, float]], temperature: float) -> list[float]:
        """max(w_p, w) of each weighted-SFT pair's (s_p, s): how far the weights are from plain SFT (0.5)."""
        if not rewards or self.config.sft_weights == "guided":
            return [1.0] * len(rewards)
        w_p, w = sft_weights(*torch.tensor(rewards, dtype=torch.float64).T, temperature)
        return torch.maximum(w_p, w).tolist()

    def sft_warmup(self) -> None:
        """SFT on the SFT set for sft_epochs epochs, loss on response tokens only; checkpointed as the warm-up."""
        config = self.config
        torch.manual_seed(iteration_seed(config.seed, WARMUP))
        examples = self.sft_examples([r["prompt"] for r in self.sft_set], [r["response"] for r in self.sft_set])
        self.train_sft(examples, config.sft_epochs, np.random.default_rng([config.seed, 1]), "SFT warm-up")
        self._checkpoint(WARMUP)

    def sft_examples(self, queries: list, responses: list[str]) -> list[tuple[list[int], list[int]]]:
        """(plain prompt ids, response ids + EOS) for queries and response texts."""
        ids = self.encode(queries)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return [(p, self.tokenizer(r, add_special_tokens=False)["input_ids"] + eos) for p, r in zip(ids, responses)]

    def train_sft(self, examples: list[tuple], epochs: int, rng: np.random.Generator, phase: str) -> dict[str, Any]:
        """Supervised fine-tuning on (prompt ids, response ids) examples: mean token NLL of the responses."""
        config = self.config
        losses = []

        def micro_loss(micro: list[tuple], step: list[tuple]) -> torch.Tensor:
            with autocast(config.dtype, self.device):
                sum_logp, _ = response_logprobs(self.train_model, micro or step[:1], self.tokenizer.pad_token_id)
            if not micro:  # idle under ZeRO: the computation of a real micro-batch, at zero weight
                return sum_logp.sum() * 0.0
            nll = -sum_logp.sum()
            losses.append(nll.item() / sum(len(r) for _, r in micro))
            return nll / sum(len(response) for _, response in step)  # mean token NLL over the step

        started, skipped = time.perf_counter(), self.skipped_steps
        steps = self._train_epochs(examples, epochs, rng, micro_loss, phase)
        skipped = self.skipped_steps - skipped
        return {
            "loss": mean_of_known(losses),
            "optimizer_steps": steps - skipped,
            "skipped_steps": skipped,
            "train_seconds": time.perf_counter() - started,
        }

    def _train_epochs(self, items: list, epochs: int, rng: np.random.Generator, micro_loss, phase: str) -> int:
        """Shuffled passes over `items` in optimizer steps of batch_size * gradient_accumulation_steps items per
        process. Each process runs its share of a step in micro-batches, the gradients are summed across
        processes, and every process takes the same optimizer step. Returns the number of steps."""
        config = self.config
        per_step = config.batch_size * config.gradient_accumulation_steps * self.dist.world
        steps = epochs * math.ceil(len(items) / per_step)
        self.progress.phase(phase, total=steps)
        self.where = phase
        for _ in range(epochs):
            order = rng.permutation(len(items))
            for start in range(0, len(items), per_step):
                step = [items[i] for i in order[start : start + per_step]]
                self._optimizer_step(step, micro_loss)
                self.progress.step()
        return steps

    # ------------------------------------------------------------------ helpers
    def _optimizer_step(self, step: list, micro_loss) -> None:
        """This process's share of `step` in micro-batches, then one optimizer step on every process."""
        config = self.config
        mine = self.dist.shard(step)
        if self.zero is not None:
            micro_batches = self.zero.micro_batches(mine, step, config.batch_size)
            finite = True
            for k, micro in enumerate(micro_batches):  # an empty micro-batch is an idle one (see ple.zero)
                loss = micro_loss(micro, step)
                finite &= bool(torch.isfinite(loss))
                self.zero.backward(loss, last=k == len(micro_batches) - 1)
            if not all(self.dist.gather([finite])):  # the engine steps as it reduces: stop before it does
                raise PLEError(f"a non-finite loss ({self.where}) stopped the run before its step; {self._hint()}")
            self.zero.step()
        else:
            for start in range(0, len(mine), config.batch_size):
                micro_loss(mine[start : start + config.batch_size], step).backward()
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
                return
            self.skipped_in_a_row = 0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.policy_version += 1

    def _hint(self) -> str:
        return f"check the rewards' scale and the learning rate ({self.config.learning_rate:g})"

    def full_model(self):
        """A context giving the policy with all its weights present, for generation and saving."""
        return self.zero.full_model() if self.zero is not None else contextlib.nullcontext(self.model)

    @property
    def train_model(self):
        """What the losses call: the DeepSpeed engine under ZeRO, else the policy itself."""
        return self.zero.engine if self.zero is not None else self.model

    def _reward_scale(self, rewards: list[float | None]) -> float:
        if self.config.reward_scaling == "raw":
            return 1.0
        self.reward_std.update(rewards)
        return self.reward_std.std

    # ------------------------------------------------------------------ run directory
    def _setup_model(self, checkpoint: Path | None) -> None:
        config = self.config
        torch.manual_seed(config.seed)  # LoRA's initial A matrices
        self.model, self.tokenizer = load_policy(config, checkpoint)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and config.max_prompt_tokens + config.max_new_tokens > limit:
            raise PLEError(
                f"max_prompt_tokens + max_new_tokens = {config.max_prompt_tokens + config.max_new_tokens} exceeds "
                f"the model's {limit} positions; lower max_prompt_tokens"
            )
        self.model.to(self.device)
        self.model.train()
        self.builder = PromptBuilder.from_config(self.tokenizer, config, self.principle)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.zero = None
        if self.dist.accelerator is not None:
            from ple.zero import ZeroEngine

            self.zero = ZeroEngine(self.dist.accelerator, self.model, self.optimizer, config)
            if checkpoint is not None:
                self.zero.load_state(checkpoint / ZERO_STATE)
        elif checkpoint is not None:
            if not (checkpoint / "optimizer.pt").is_file():
                raise PLEError(f"cannot resume from {checkpoint}: it holds no optimizer.pt (was it a DeepSpeed run?)")
            self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        self.policy_version = 0  # optimizer steps taken in this process: what the vLLM engine syncs against
        self.vllm = None
        if self.samples_itself and select_backend(config.generation_backend, self.device) == "vllm":
            from ple.vllm_backend import VLLMGenerator

            self.vllm = VLLMGenerator(config, self.tokenizer)

    def _prepare_run_dir(self, resume: bool) -> int:
        """Start a run, or pick up a killed one. Returns the first iteration to run (WARMUP for the warm-up).

        The directory is locked for the run's life (ple.rundir). A run with a finished checkpoint continues only
        with --resume and an unchanged config and data; one that failed before its first checkpoint restarts,
        with the config given now. An unreadable newest checkpoint gives way to the one before it."""
        config = self.config
        if self.dist.main:
            self._lock = lock_run_dir(self.run_dir)
        saved_config = self.run_dir / "config.yaml"
        finished = self._checkpoints() if saved_config.is_file() else []
        if (finished or (self.run_dir / "budget.json").is_file()) and not resume:
            raise PLEError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another output_dir"
            )
        if finished:
            self._check_resumable(saved_config, finished[-1][0])
        last = self._load_newest_readable(finished)
        self.dist.barrier()  # every process has checked the run directory before the main one writes to it
        done = last if last is not None else (WARMUP - 1 if config.sft_epochs > 0 else WARMUP)
        if self.dist.main:
            save_config(config, saved_config)
            write_input_hashes(self.run_dir, config)
            self._discard_after(done)
        return done + 1

    def _load_newest_readable(self, finished: list[tuple[int, Path]]) -> int | None:
        """Set up the model from the newest checkpoint that loads (from scratch when there is none); its iteration."""
        for t, checkpoint in reversed(finished):
            try:
                state = _read_json(checkpoint / "trainer_state.json")
                self._setup_model(checkpoint)
            except PLEError:
                raise
            except Exception as e:  # a torn safetensors or optimizer file: what a full disk or a bad copy leaves
                print(f"ple: warning: checkpoint {checkpoint} is unreadable ({first_line(e)})", file=sys.stderr)
                continue
            self.reward_std = RunningStd(**state["reward_std"])
            return t
        if finished:
            raise PLEError(f"no checkpoint in {self.run_dir / 'checkpoints'} could be read; start a new run")
        self._setup_model(None)  # before writing anything, so a bad model leaves no half-made run
        return None

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    def _check_resumable(self, saved: Path, last: int) -> None:
        ignored = ("iterations", "device", "output_dir")  # output_dir: the run may have been moved or renamed
        changed = [k for k in config_changes(saved, self.config) if k not in ignored]
        if changed:
            raise PLEError(
                f"cannot resume {self.run_dir}: the config changed ({', '.join(changed)}); "
                "only iterations and device may"
            )
        if self.config.iterations < last + 1:
            raise PLEError(
                f"cannot resume {self.run_dir} with iterations={self.config.iterations}: it has finished {last + 1}"
            )
        check_inputs_unchanged(self.run_dir, self.config)

    def _checkpoints(self) -> list[tuple[int, Path]]:
        """Finished checkpoints as (iteration, dir), oldest first; half-written ones have no trainer_state.json."""
        root = self.run_dir / "checkpoints"
        found = (
            [
                (int(_read_json(d / "trainer_state.json")["iteration"]), d)
                for d in root.glob("[!.]*")
                if (d / "trainer_state.json").is_file()
            ]
            if root.is_dir()
            else []
        )
        return sorted(found)

    def _discard_after(self, done: int) -> None:
        """Drop rows of iterations that finished after the last checkpoint: they are redone identically."""
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            atomic_write_jsonl(metrics, [r for r in read_jsonl(metrics) if r["iteration"] <= done])
        for path in (self.run_dir / "generations").glob("iter_*.jsonl"):
            if int(path.stem.split("_")[1]) > done:
                path.unlink()

    def _write_iteration(self, t: int, rows: list[dict], metrics: dict) -> None:
        if self.dist.main:
            atomic_write_jsonl(self.run_dir / "generations" / f"iter_{t:03d}.jsonl", rows)
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(strict_json(metrics) + "\n")
        self._checkpoint(t)

    def _checkpoint(self, t: int) -> None:
        """Written to a hidden directory and renamed once complete. Every process calls it: under ZeRO each
        writes its optimizer shard, and the main process writes the rest."""
        root = self.run_dir / "checkpoints"
        tmp = root / f".{_checkpoint_name(t)}.tmp"
        if self.dist.main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.dist.barrier()
        with self.full_model() as model:
            if self.dist.main:
                save_model(model, self.tokenizer, tmp)
        if self.zero is not None:
            self.zero.save_state(tmp / ZERO_STATE)
        elif self.dist.main:
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        self.dist.barrier()
        if not self.dist.main:
            return
        atomic_write_text(
            tmp / "trainer_state.json", json.dumps({"iteration": t, "reward_std": self.reward_std.state()})
        )
        replace_dir(tmp, root / _checkpoint_name(t))
        if self.config.keep_checkpoints:
            for _, old in self._checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)


def config_changes(saved: Path, config: Config) -> list[str]:
    """The fields of `config` that differ from the config.yaml a run directory holds (a field the saved file
    lacks, from an older version, counts as its default)."""
    import yaml

    before = {**Config().to_dict(), **yaml.safe_load(saved.read_text())}
    return [k for k, v in config.to_dict().items() if not _same_setting(k, before.get(k), v)]


PATH_FIELDS = ("model", "dataset", "sft_dataset", "eval_dataset", "principle", "output_dir")


def _same_setting(key: str, a, b) -> bool:
    """Equal values, or two spellings of one path (runs/ref/ and runs/ref)."""
    if a == b:
        return True
    if key in PATH_FIELDS and isinstance(a, str) and isinstance(b, str) and a and b:
        return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
    return False


BUDGET_KEYS = ("samples", "reward_calls", "gen_tokens", "seconds")


def write_budget(run_dir: Path, extra: dict | None = None) -> dict[str, float]:
    """budget.json: what a run spent, summed over metrics.jsonl (so a resumed run counts every iteration once):
    policy samples drawn, completions scored by the training reward, tokens generated, and training wall time."""
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    budget = {key: sum(r.get(key) or 0 for r in rows) for key in BUDGET_KEYS}
    budget.update(extra or {})
    atomic_write_text(run_dir / "budget.json", strict_json(budget, indent=2))
    return budget


def _generation_stats(samples: list, seconds: float) -> dict[str, float]:
    return {"gen_seconds": seconds, "gen_tokens": sum(len(x.response_ids) for x in samples)}


def merge_generation_stats(parts: list[dict]) -> dict[str, float]:
    """Generation across processes: tokens add up, the slowest process sets the time."""
    seconds = max(p["gen_seconds"] for p in parts)
    tokens = sum(p["gen_tokens"] for p in parts)
    return {"gen_seconds": seconds, "gen_tokens": tokens, "gen_tokens_per_s": tokens / max(seconds, 1e-9)}


def _checkpoint_name(t: int) -> str:
    return "warmup" if t == WARMUP else f"iter_{t:03d}"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _summary_line(m: dict) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:+.3f}"

    return (
        f"iter {m['iteration']}: tau={m['tau']:.4g} s={fmt(m['mean_s'])} s_p={fmt(m['mean_s_p'])} "
        f"rank/wsft/skip={m['n_rank']}/{m['n_wsft']}/{m['n_skip']} loss={fmt(m['loss'])} "
        f"{m['seconds']:.1f}s ({m['gen_tokens_per_s']:.0f} gen tok/s)"
    )


__all__ = ["PLETrainer", "query_order", "write_budget"]
