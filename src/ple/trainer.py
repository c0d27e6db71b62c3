"""PLE's algorithm: one iteration reads like docs/algorithm.md.

tau_t  = schedule(t)
x      = next queries_per_iteration queries
y, y_p = pi(.|x), pi(.|p + x)             one batched generate call
s, s_p = r(x, y), r(x, y_p)                always against plain x
branch = rank | wsft | skip                 by gap = s_p - s and tau_t
train on (x -> y_p, y) with the branch's loss (ple.losses.ple_loss), then log, write and checkpoint

The loop around it (resume, warm-up, checkpoints, final model) is ple.training.loop's.
"""

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ple.generation import Sample
from ple.logprobs import shared_prompt_logprobs
from ple.losses import assign_branch, ple_loss, sft_weights, wsft_temperature
from ple.model import autocast
from ple.rewards import RunningStd
from ple.schedule import threshold
from ple.training.harness import Harness
from ple.training.loop import (
    PLETrainer,
    RunResult,
    iteration_rng,
    merge_generation_stats,
    no_valid_reward,
    query_order,
    signed,
)
from ple.training.policy import mean_of_known

LOSS_KEYS = ("loss", "rank_loss", "wsft_loss")  # what ple_loss returns per query


@dataclass
class Record:
    """One query's way through an iteration: generated, scored, branched, trained on."""

    position: int  # its place among the iteration's queries
    index: int  # its row in the query set
    row: dict  # the query row: `prompt`, and any other columns the reward reads
    x_ids: list[int] | None = None  # the plain prompt's token ids
    y: Sample | None = None  # ~ pi(.|x)
    y_p: Sample | None = None  # ~ pi(.|p + x)
    s: float | None = None  # r(x, y); None when the reward gave no valid score
    s_p: float | None = None  # r(x, y_p)
    gap: float | None = None  # (s_p - s) / reward scale
    branch: str = "skip"
    winner: str | None = None  # "guided" or "plain" for a ranked pair


class PLE:
    """PLE and its ablations (the registry's presets): the loop's iteration, and the running reward scale it
    carries from one iteration to the next."""

    def __init__(self, harness: Harness):
        self.harness, self.config, self.policy, self.dist = harness, harness.config, harness.policy, harness.dist
        self.device, self.queries = harness.device, harness.queries
        self.reward_std = RunningStd()

    def state(self) -> dict:
        return {"reward_std": self.reward_std.state()}

    def load_state(self, state: dict) -> None:
        if not isinstance(state.get("reward_std"), dict):
            raise ValueError("trainer_state.json has no reward_std")
        self.reward_std = RunningStd(**state["reward_std"])

    def iteration(self, t: int) -> tuple[list[dict], dict[str, Any]]:
        config = self.config
        started = time.perf_counter()
        indices = query_order(len(self.queries), t, config.queries_per_iteration, config.seed, config.shuffle)
        mine = self.dist.shard([Record(k, i, self.queries[i]) for k, i in enumerate(indices)])
        gen_stats = self.generate(mine)
        score_seconds = self.score(mine)
        # Every process needs the whole iteration, so that taus, branches and pairs agree everywhere.
        records = sorted(self.dist.gather(mine), key=lambda r: r.position)

        if all(r.s is None or r.s_p is None for r in records):
            raise no_valid_reward(t, len(records))
        scale = self.reward_scale([r.s for r in records] + [r.s_p for r in records])
        for r in records:
            r.gap = None if r.s is None or r.s_p is None else (r.s_p - r.s) / scale
        tau = threshold(t, config.schedule, config.tau0, config.alpha, config.tau_quantile, [r.gap for r in records])
        for r in records:
            r.branch, r.winner = assign_branch(r.gap, tau, config.negative_gap)
        # A query whose branch has coefficient 0 (an ablation) carries no loss, so it is not trained on and not
        # counted in the step's mean: the ablation keeps the full step size.
        coefficient = {"rank": config.rank_coef, "wsft": config.sft_coef, "skip": 0.0}
        trained = [r for r in records if coefficient[r.branch] > 0]
        temperature = wsft_temperature(config.wsft_temperature, tau)
        train_stats = self.train_on(trained, t, temperature, scale)

        metrics = {
            "iteration": t,
            "tau": tau,
            **self.branch_metrics(records, trained, temperature, scale),
            **merge_generation_stats(self.dist.gather([gen_stats])),
            "score_seconds": score_seconds,
            **train_stats,
            "seconds": time.perf_counter() - started,
            "processes": self.dist.world,
        }
        return [self.generation_row(t, r, tau) for r in records], metrics

    # -------------------------------------------------------------- steps
    def generate(self, records: list[Record]) -> dict[str, float]:
        """y ~ pi(.|x) and y_p ~ pi(.|p + x) for every query, in one batched call."""
        queries = [r.row["prompt"] for r in records]
        plain_ids = self.policy.encode(queries)
        samples, stats = self.policy.sample(plain_ids + self.policy.encode(queries, guided=True))
        for r, x_ids, y, y_p in zip(records, plain_ids, samples, samples[len(records) :]):
            r.x_ids, r.y, r.y_p = x_ids, y, y_p
        return stats

    def score(self, records: list[Record]) -> float:
        """s = r(x, y), s_p = r(x, y_p): both against the plain query, in one reward call; returns its seconds."""
        rows = [r.row for r in records]
        scores, seconds = self.harness.score(rows + rows, [r.y.text for r in records] + [r.y_p.text for r in records])
        for r, s, s_p in zip(records, scores, scores[len(records) :]):
            r.s, r.s_p = s, s_p
        return seconds

    def reward_scale(self, rewards: list[float | None]) -> float:
        if self.config.reward_scaling == "raw":
            return 1.0
        self.reward_std.update(rewards)
        return self.reward_std.std

    def train_on(self, records: list[Record], t: int, temperature: float, scale: float) -> dict[str, Any]:
        """epochs_per_iteration passes over the iteration's trained queries; each optimizer step minimises the
        mean of their PLE losses."""
        config = self.config

        def micro_loss(micro: list[Record], step: list[Record]) -> tuple[torch.Tensor, tuple[dict, int]]:
            losses, n_tokens = self.pair_losses(micro, temperature, scale)
            reported = {key: values.detach().tolist() for key, values in losses.items()}
            return losses["loss"].sum() / len(step), (reported, n_tokens)  # the mean over the step's queries

        policy = self.policy
        started, skipped = time.perf_counter(), policy.skipped_steps
        rng = iteration_rng(config.seed, t, 7)
        phase = f"training (iteration {t})"
        steps, reports = policy.train_epochs(records, config.epochs_per_iteration, rng, micro_loss, phase)
        seconds = time.perf_counter() - started
        tokens = sum(n for _, n in reports)
        totals = {key: self.dist.gather([v for losses, _ in reports for v in losses[key]]) for key in LOSS_KEYS}
        return {
            "loss": mean_of_known(totals["loss"]),
            "rank_loss": mean_of_known(v for v in totals["rank_loss"] if not math.isnan(v)),
            "wsft_loss": mean_of_known(v for v in totals["wsft_loss"] if not math.isnan(v)),
            "optimizer_steps": steps - (policy.skipped_steps - skipped),
            "skipped_steps": policy.skipped_steps - skipped,
            "train_seconds": seconds,
            "train_tokens_per_s": sum(self.dist.gather([tokens])) / max(seconds, 1e-9),
        }

    def pair_losses(self, records: list[Record], temperature: float, scale: float):
        """Per-query losses of a micro-batch (ple.losses.ple_loss) from l(y_p|x) and l(y|x), with x run once for
        both; and the micro-batch's token count."""
        config, policy = self.config, self.policy
        with autocast(config.dtype, self.device):
            sum_logp, n_tokens = shared_prompt_logprobs(
                policy.train_model,
                [r.x_ids for r in records],
                [[r.y_p.response_ids for r in records], [r.y.response_ids for r in records]],
                policy.tokenizer.pad_token_id,
            )
        n, device = len(records), sum_logp.device
        losses = ple_loss(
            sum_logp[:n],
            n_tokens[:n],
            sum_logp[n:],
            n_tokens[n:],
            torch.tensor([r.s_p / scale for r in records], device=device, dtype=torch.float64),
            torch.tensor([r.s / scale for r in records], device=device, dtype=torch.float64),
            torch.tensor([r.branch == "rank" for r in records], device=device),
            torch.tensor([r.winner == "guided" for r in records], device=device),
            rank_kind=config.rank_loss,
            margin=config.margin,
            rank_beta=config.rank_beta,
            rank_coef=config.rank_coef,
            sft_coef=config.sft_coef,
            rank_sft_coef=config.rank_sft_coef,
            temperature=temperature,
            all_weight_on_guided=config.sft_weights == "guided",
        )
        tokens = sum(2 * len(r.x_ids) + len(r.y_p.response_ids) + len(r.y.response_ids) for r in records)
        return losses, tokens

    # -------------------------------------------------------------- what is written
    def branch_metrics(self, records: list[Record], trained: list[Record], temperature: float, scale: float) -> dict:
        counts = {name: sum(r.branch == name for r in records) for name in ("rank", "wsft", "skip")}
        larger_weight = self.larger_wsft_weights(
            [(r.s_p / scale, r.s / scale) for r in trained if r.branch == "wsft"], temperature
        )
        return {
            "mean_s": mean_of_known(r.s for r in records),
            "mean_s_p": mean_of_known(r.s_p for r in records),
            "mean_gap": mean_of_known(r.gap for r in records),
            **{f"frac_{k}": v / len(records) for k, v in counts.items()},
            **{f"n_{k}": v for k, v in counts.items()},
            "n_rank_plain_wins": sum(r.winner == "plain" for r in records),
            "n_trained": len(trained),
            "n_invalid_reward": sum(r.gap is None for r in records),
            "reward_scale": scale,
            "wsft_temperature": temperature,
            "wsft_weight_max_mean": mean_of_known(larger_weight),
            "wsft_weight_max_min": min(larger_weight, default=None),
            "samples": 2 * len(records),
            "reward_calls": 2 * len(records),
        }

    def larger_wsft_weights(self, rewards: list[tuple[float, float]], temperature: float) -> list[float]:
        """max(w_p, w) of each weighted-SFT pair's (s_p, s): how far the weights are from plain SFT (0.5)."""
        if not rewards or self.config.sft_weights == "guided":
            return [1.0] * len(rewards)
        w_p, w = sft_weights(*torch.tensor(rewards, dtype=torch.float64).T, temperature)
        return torch.maximum(w_p, w).tolist()

    def generation_row(self, t: int, r: Record, tau: float) -> dict[str, Any]:
        builder = self.policy.builder
        return {
            "iteration": t,
            "index": r.index,
            "query": r.row["prompt"],
            "prompt": builder.render(r.row["prompt"]),
            "principle_prompt": builder.render(r.row["prompt"], True),
            "y": r.y.text,
            "y_p": r.y_p.text,
            "s": r.s,
            "s_p": r.s_p,
            "gap": r.gap,
            "branch": r.branch,
            "winner": r.winner,
            "tau": tau,
        }

    def summary_line(self, m: dict) -> str:
        return (
            f"iter {m['iteration']}: tau={m['tau']:.4g} s={signed(m['mean_s'])} s_p={signed(m['mean_s_p'])} "
            f"rank/wsft/skip={m['n_rank']}/{m['n_wsft']}/{m['n_skip']} loss={signed(m['loss'])} "
            f"{m['seconds']:.1f}s ({m['gen_tokens_per_s']:.0f} gen tok/s)"
        )


__all__ = ["PLE", "PLETrainer", "Record", "RunResult", "query_order"]
