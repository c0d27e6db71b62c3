"""SFT on the SFT set: iteration t trains one pass over the next 2 * Q rows (as many examples as PLE's pairs)."""

import time
from typing import Any

from ple.training.harness import Harness
from ple.training.loop import iteration_rng, query_order, samples_per_iteration


class SFT:
    def __init__(self, harness: Harness):
        self.config, self.policy, self.sft_set = harness.config, harness.policy, harness.sft_set

    def iteration(self, t: int) -> tuple[list[dict], dict[str, Any]]:
        config = self.config
        started = time.perf_counter()
        n = samples_per_iteration(config)
        rows = [self.sft_set[i] for i in query_order(len(self.sft_set), t, n, config.seed, config.shuffle)]
        examples = self.policy.sft_examples([r["prompt"] for r in rows], [r["response"] for r in rows])
        rng = iteration_rng(config.seed, t)
        stats = self.policy.train_sft(examples, config.epochs_per_iteration, rng, "SFT")
        metrics = {
            "iteration": t,
            "sft_examples": len(rows),
            "samples": 0,
            "reward_calls": 0,
            "gen_tokens": 0,
            **stats,
            "seconds": time.perf_counter() - started,
        }
        return [{"iteration": t, **r} for r in rows], metrics

    def summary_line(self, m: dict) -> str:
        return f"iter {m['iteration']}: SFT on {m['sft_examples']} rows, loss={m['loss']:.3f} {m['seconds']:.1f}s"
