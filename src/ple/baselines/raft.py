"""RAFT: iterative best-of-K. Sample raft_k plain answers per query, SFT on the best one by reward."""

import time
from typing import Any

from ple.training.harness import Harness
from ple.training.loop import (
    iteration_rng,
    merge_generation_stats,
    no_valid_reward,
    query_order,
    samples_per_iteration,
    signed,
)
from ple.training.policy import mean_of_known


class RAFT:
    def __init__(self, harness: Harness):
        self.harness, self.config, self.policy, self.dist = harness, harness.config, harness.policy, harness.dist
        self.queries = harness.queries

    def iteration(self, t: int) -> tuple[list[dict], dict[str, Any]]:
        config, policy = self.config, self.policy
        k = config.raft_k
        started = time.perf_counter()
        n_queries = samples_per_iteration(config) // k  # config.validate: k divides it
        indices = query_order(len(self.queries), t, n_queries, config.seed, config.shuffle)
        rows = [self.queries[i] for i in indices]

        mine = self.dist.shard(list(range(len(rows))))
        my_rows = [rows[i] for i in mine for _ in range(k)]
        samples, gen_stats = policy.sample(policy.encode([r["prompt"] for r in my_rows]))
        scores, score_seconds = self.harness.score(my_rows, [x.text for x in samples])
        gathered = sorted(self.dist.gather(list(zip(mine, _chunks(samples, k), _chunks(scores, k)))))

        best = []  # (query position, sample, reward) of each query's best valid answer
        for i, candidates, rewards in gathered:
            valid = [j for j, r in enumerate(rewards) if r is not None]
            if valid:
                j = max(valid, key=lambda j: rewards[j])
                best.append((i, candidates[j], rewards[j]))
        if not best:
            raise no_valid_reward(t, len(rows))
        examples = [(x.prompt_ids, x.response_ids) for _, x, _ in best]
        stats = policy.train_sft(examples, config.epochs_per_iteration, iteration_rng(config.seed, t), "SFT")

        all_rewards = [r for _, _, rewards in gathered for r in rewards]
        generation_rows = [
            {
                "iteration": t,
                "index": indices[i],
                "query": rows[i]["prompt"],
                "y": [x.text for x in candidates],
                "s": rewards,
                "best": next((x.text for j, x, _ in best if j == i), None),
            }
            for i, candidates, rewards in gathered
        ]
        metrics = {
            "iteration": t,
            "queries": len(rows),
            "mean_s": mean_of_known(all_rewards),
            "mean_best": mean_of_known(r for _, _, r in best),
            "n_trained": len(best),
            "n_invalid_reward": sum(r is None for r in all_rewards),
            "samples": len(rows) * k,
            "reward_calls": len(rows) * k,
            **merge_generation_stats(self.dist.gather([gen_stats])),
            "score_seconds": score_seconds,
            **stats,
            "seconds": time.perf_counter() - started,
        }
        return generation_rows, metrics

    def summary_line(self, m: dict) -> str:
        return (
            f"iter {m['iteration']}: best-of-{self.config.raft_k} on {m['queries']} queries, "
            f"mean s={signed(m['mean_s'])} best={signed(m['mean_best'])} loss={signed(m['loss'])} {m['seconds']:.1f}s"
        )


def _chunks(items: list, k: int) -> list[list]:
    return [items[i : i + k] for i in range(0, len(items), k)]
