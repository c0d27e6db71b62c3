"""Context distillation: SFT on (plain x -> y_p), y_p ~ pi(.|p + x), with no reward at all. It needs no y, so under
the equal-sample budget it draws y_p for 2 * queries_per_iteration queries."""

import time
from typing import Any

from ple.training.harness import Harness
from ple.training.loop import (
    iteration_rng,
    merge_generation_stats,
    query_order,
    samples_per_iteration,
    signed,
)


class Distill:
    def __init__(self, harness: Harness):
        self.config, self.policy, self.dist = harness.config, harness.policy, harness.dist
        self.queries = harness.queries

    def iteration(self, t: int) -> tuple[list[dict], dict[str, Any]]:
        config, policy = self.config, self.policy
        started = time.perf_counter()
        indices = query_order(len(self.queries), t, samples_per_iteration(config), config.seed, config.shuffle)
        rows = [self.queries[i] for i in indices]

        mine = self.dist.shard(list(range(len(rows))))
        queries = [rows[i]["prompt"] for i in mine]
        samples, gen_stats = policy.sample(policy.encode(queries, guided=True))
        gathered = sorted(self.dist.gather(list(zip(mine, policy.encode(queries), samples))), key=lambda r: r[0])
        examples = [(plain_ids, y_p.response_ids) for _, plain_ids, y_p in gathered]
        rng = iteration_rng(config.seed, t)
        stats = policy.train_sft(examples, config.epochs_per_iteration, rng, "training")

        generation_rows = [
            {
                "iteration": t,
                "index": indices[i],
                "query": rows[i]["prompt"],
                "prompt": policy.builder.render(rows[i]["prompt"]),
                "principle_prompt": policy.builder.render(rows[i]["prompt"], True),
                "y_p": y_p.text,
            }
            for i, _, y_p in gathered
        ]
        metrics = {
            "iteration": t,
            "queries": len(rows),
            "samples": len(rows),
            "reward_calls": 0,
            **merge_generation_stats(self.dist.gather([gen_stats])),
            **stats,
            "seconds": time.perf_counter() - started,
        }
        return generation_rows, metrics

    def summary_line(self, m: dict) -> str:
        return (
            f"iter {m['iteration']}: SFT on y_p of {m['queries']} queries, loss={signed(m['loss'])} {m['seconds']:.1f}s"
        )
