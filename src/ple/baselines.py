"""The methods PLE is compared against, in PLE's harness: same config, model loading, LoRA,
reward plumbing, run directory and budget accounting.

Equal budgets: PLE draws 2 * queries_per_iteration policy samples per iteration (y and y_p).
Every baseline that samples draws the same number over the run, from the same query pool:

- sft:  SFT on the SFT set; iteration t trains on the next 2 * Q SFT rows. No policy samples.
- raft: iteration t samples raft_k answers for each of 2 * Q / raft_k queries, keeps the best by
        reward, and trains SFT on (x -> best). Iterative best-of-K, as in RAFT.
- dpo:  TRL's DPOTrainer. Pairs come from the data's chosen/rejected columns when it has them
        (HH); otherwise they are built once from 2 base-model samples for each of Q * iterations
        queries, the higher reward chosen (the DPO paper's IMDb setup).
- rloo: TRL's RLOOTrainer, online, 2 samples for each of Q * iterations queries.
- distill: context distillation, SFT on (plain x -> y_p) for 2 * Q queries per iteration (no y, no reward).

Every method gets the same SFT warm-up when sft_epochs > 0; for dpo and rloo TRL's reference model is
then a copy of the warmed-up adapter. rlcd and the ple-* ablations are presets of the PLE trainer
(ple.config.METHOD_PRESETS).
"""

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ple.config import Config
from ple.errors import PLEError
from ple.io import atomic_write_jsonl, atomic_write_text, read_jsonl
from ple.progress import Progress
from ple.trainer import (
    WARMUP,
    PLETrainer,
    iteration_seed,
    mean_of_known,
    merge_generation_stats,
    query_order,
    write_budget,
)


def make_trainer(config: Config, reward_fn=None) -> PLETrainer:
    """The trainer for config.method."""
    trainers = {
        "sft": SFTBaseline,
        "raft": RaftTrainer,
        "distill": DistillTrainer,
        "dpo": DPOBaseline,
        "rloo": RLOOBaseline,
    }
    return trainers.get(config.method, PLETrainer)(config, reward_fn)


def samples_per_iteration(config: Config) -> int:
    """The policy samples PLE draws per iteration, which every sampling method matches."""
    return 2 * config.queries_per_iteration


class SFTBaseline(PLETrainer):
    """SFT on the SFT set: iteration t trains one pass over the next 2 * Q rows (as many examples as PLE's pairs)."""

    def iteration(self, t: int) -> dict[str, Any]:
        config = self.config
        torch.manual_seed(iteration_seed(config.seed, t))
        started = time.perf_counter()
        n = samples_per_iteration(config)
        rows = [self.sft_set[i] for i in query_order(len(self.sft_set), t, n, config.seed, config.shuffle)]
        examples = self.sft_examples([r["prompt"] for r in rows], [r["response"] for r in rows])
        stats = self.train_sft(
            examples, config.epochs_per_iteration, np.random.default_rng([config.seed, t + 2]), "SFT"
        )
        metrics = {
            "iteration": t,
            "sft_examples": len(rows),
            "samples": 0,
            "reward_calls": 0,
            "gen_tokens": 0,
            **stats,
            "seconds": time.perf_counter() - started,
        }
        self._write_iteration(t, [{"iteration": t, **r} for r in rows], metrics)
        return metrics

    def summary_line(self, m: dict) -> str:
        return f"iter {m['iteration']}: SFT on {m['sft_examples']} rows, loss={m['loss']:.3f} {m['seconds']:.1f}s"


class RaftTrainer(PLETrainer):
    """Iterative best-of-K: sample raft_k plain answers per query, SFT on the best one by reward."""

    def iteration(self, t: int) -> dict[str, Any]:
        config = self.config
        k = config.raft_k
        torch.manual_seed(iteration_seed(config.seed, t))
        started = time.perf_counter()
        n_queries = samples_per_iteration(config) // k  # config.validate: k divides it
        indices = query_order(len(self.queries), t, n_queries, config.seed, config.shuffle)
        rows = [self.queries[i] for i in indices]

        mine = self.dist.shard(list(range(len(rows))))
        my_rows = [rows[i] for i in mine for _ in range(k)]
        samples, gen_stats = self.sample(self.encode([r["prompt"] for r in my_rows]))
        scores, score_seconds = self.score_rows(my_rows, [x.text for x in samples])
        gathered = sorted(self.dist.gather(list(zip(mine, _chunks(samples, k), _chunks(scores, k)))))
        gen_stats = merge_generation_stats(self.dist.gather([gen_stats]))

        best = []  # (query index, sample, reward) of each query's best valid answer
        for i, candidates, rewards in gathered:
            valid = [j for j, r in enumerate(rewards) if r is not None]
            if valid:
                j = max(valid, key=lambda j: rewards[j])
                best.append((i, candidates[j], rewards[j]))
        examples = [(x.prompt_ids, x.response_ids) for _, x, _ in best]
        stats = self.train_sft(
            examples, config.epochs_per_iteration, np.random.default_rng([config.seed, t + 2]), "SFT"
        )

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
            **gen_stats,
            "score_seconds": score_seconds,
            **stats,
            "seconds": time.perf_counter() - started,
        }
        self._write_iteration(t, generation_rows, metrics)
        return metrics

    def summary_line(self, m: dict) -> str:
        return (
            f"iter {m['iteration']}: best-of-{self.config.raft_k} on {m['queries']} queries, "
            f"mean s={_fmt(m['mean_s'])} best={_fmt(m['mean_best'])} loss={_fmt(m['loss'])} {m['seconds']:.1f}s"
        )


class DistillTrainer(PLETrainer):
    """Context distillation: SFT on (plain x -> y_p), y_p ~ pi(.|p + x), with no reward at all. It needs no y, so
    under the equal-sample budget it draws y_p for 2 * queries_per_iteration queries."""

    def iteration(self, t: int) -> dict[str, Any]:
        config = self.config
        torch.manual_seed(iteration_seed(config.seed, t))
        started = time.perf_counter()
        self.truncated_prompts = 0
        indices = query_order(len(self.queries), t, samples_per_iteration(config), config.seed, config.shuffle)
        rows = [self.queries[i] for i in indices]

        mine = self.dist.shard(list(range(len(rows))))
        queries = [rows[i]["prompt"] for i in mine]
        samples, gen_stats = self.sample(self.encode(queries, guided=True))
        gathered = sorted(self.dist.gather(list(zip(mine, self.encode(queries), samples))), key=lambda r: r[0])
        gen_stats = merge_generation_stats(self.dist.gather([gen_stats]))
        examples = [(plain_ids, y_p.response_ids) for _, plain_ids, y_p in gathered]
        stats = self.train_sft(
            examples, config.epochs_per_iteration, np.random.default_rng([config.seed, t + 2]), "training"
        )

        generation_rows = [
            {
                "iteration": t,
                "index": indices[i],
                "query": rows[i]["prompt"],
                "prompt": self.builder.render(rows[i]["prompt"]),
                "principle_prompt": self.builder.render(rows[i]["prompt"], True),
                "y_p": y_p.text,
            }
            for i, _, y_p in gathered
        ]
        metrics = {
            "iteration": t,
            "queries": len(rows),
            "n_truncated_prompts": sum(self.dist.gather([self.truncated_prompts])),
            "samples": len(rows),
            "reward_calls": 0,
            **gen_stats,
            **stats,
            "seconds": time.perf_counter() - started,
        }
        self._write_iteration(t, generation_rows, metrics)
        return metrics

    def summary_line(self, m: dict) -> str:
        return (
            f"iter {m['iteration']}: SFT on y_p of {m['queries']} queries, loss={_fmt(m['loss'])} {m['seconds']:.1f}s"
        )


class _TRLBaseline(PLETrainer):
    """A baseline trained by a TRL trainer on the policy PLE would train (same LoRA, optimiser settings and
    seed). A killed run restarts its TRL training; work cached in the run directory (DPO's pairs) is kept."""

    def _train(self, resume: bool) -> Path:
        final = self.run_dir / "final"
        if resume and (self.run_dir / "budget.json").is_file() and final.is_dir():
            return final
        if self.dist.world > 1 or self.dist.accelerator is not None:
            raise PLEError(
                f"method={self.config.method} runs in one process without DeepSpeed; launch it with plain python"
            )
        start = self._prepare_run_dir(resume)
        started = time.perf_counter()
        with Progress(total=1, description=self.config.method) as progress:
            self.progress = progress
            if start == WARMUP:  # as every method gets it; TRL's reference is then a copy of the warmed-up adapter
                self.sft_warmup()
            budget = self.run_trl()
            progress.advance()
        for name in list(getattr(self.model, "peft_config", {})):
            if name != "default":  # TRL's frozen reference copy of the adapter, not part of the policy
                self.model.delete_adapter(name)
        self._save_final()
        write_budget(self.run_dir, {**budget, "seconds": time.perf_counter() - started})
        return final

    def trl_args(self, config_class, **extra):
        config = self.config
        return config_class(
            output_dir=str(self.run_dir / "trl"),
            learning_rate=config.learning_rate,
            lr_scheduler_type="constant",  # PLE's optimiser has no schedule either
            warmup_steps=0,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm if config.max_grad_norm > 0 else 1e9,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            gradient_checkpointing=False,
            seed=config.seed,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=self.device.type == "cpu",
            bf16=config.dtype == "bfloat16",
            disable_tqdm=False,
            **extra,
        )

    def write_log(self, log_history: list[dict]) -> None:
        rows = [{"iteration": i, **row} for i, row in enumerate(log_history)]
        atomic_write_jsonl(self.run_dir / "metrics.jsonl", rows)

    def all_queries(self) -> list[dict]:
        """The queries PLE would draw over the whole run, in its order."""
        config = self.config
        n = config.queries_per_iteration * config.iterations
        return [self.queries[i] for i in query_order(len(self.queries), 0, n, config.seed, config.shuffle)]


class DPOBaseline(_TRLBaseline):
    def run_trl(self) -> dict[str, Any]:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        config = self.config
        pairs, budget = self.preference_pairs()
        if not pairs:
            raise PLEError("dpo: no preference pairs (every sampled pair tied or had no reward)")
        self.progress.phase("DPO training")
        args = self.trl_args(
            DPOConfig,
            beta=config.dpo_beta,
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs_per_iteration,
        )
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        trainer = DPOTrainer(model=self.model, args=args, train_dataset=dataset, processing_class=self.tokenizer)
        trainer.train()
        self.model = trainer.model
        self.write_log(trainer.state.log_history)
        return {**budget, "pairs": len(pairs)}

    def preference_pairs(self) -> tuple[list[dict], dict[str, Any]]:
        """(prompt, chosen, rejected) rows, cached in pairs.jsonl, and what building them cost."""
        cache = self.run_dir / "pairs.jsonl"
        budget_file = self.run_dir / "pairs_budget.json"
        if cache.is_file() and budget_file.is_file():
            return read_jsonl(cache), json.loads(budget_file.read_text())
        rows = self.all_queries()
        if any(r.get("chosen") is not None and r.get("rejected") is not None for r in rows):
            pairs = [
                {"prompt": self.builder.render(r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in rows
                if r.get("chosen") is not None and r.get("rejected") is not None
            ]
            budget = {"samples": 0, "reward_calls": 0, "gen_tokens": 0, "pair_source": "data"}
        else:
            if self.reward_fn is None:
                raise PLEError("dpo needs a reward to rank base-model samples (or data with chosen/rejected)")
            torch.manual_seed(iteration_seed(self.config.seed, 0))
            texts = [self.builder.render(r["prompt"]) for r in rows]
            ids = self.encode([r["prompt"] for r in rows])
            samples, stats = self.sample(ids + ids)
            scores, _ = self.score_rows(rows + rows, [x.text for x in samples])
            n = len(rows)
            pairs = []
            for text, a, b, s_a, s_b in zip(texts, samples[:n], samples[n:], scores[:n], scores[n:]):
                if s_a is None or s_b is None or s_a == s_b:
                    continue
                (win, s_w), (lose, s_l) = sorted([(a, s_a), (b, s_b)], key=lambda x: -x[1])
                pairs.append(
                    {"prompt": text, "chosen": win.text, "rejected": lose.text, "s_chosen": s_w, "s_rejected": s_l}
                )
            budget = {"samples": 2 * n, "reward_calls": 2 * n, "gen_tokens": stats["gen_tokens"], "pair_source": "base"}
        atomic_write_jsonl(cache, pairs)
        atomic_write_text(budget_file, json.dumps(budget))
        return pairs, budget


class RLOOBaseline(_TRLBaseline):
    samples_itself = False  # RLOOTrainer generates, with its own colocated vLLM when the backend is vllm

    def run_trl(self) -> dict[str, Any]:
        from datasets import Dataset
        from trl import RLOOConfig, RLOOTrainer

        from ple.vllm_backend import select_backend

        config = self.config
        rows = self.all_queries()
        per_step = 2 * config.batch_size * config.gradient_accumulation_steps  # completions per optimiser step
        args = self.trl_args(
            RLOOConfig,
            beta=config.rloo_beta,
            num_generations=2,
            per_device_train_batch_size=2 * config.batch_size,
            max_steps=math.ceil(2 * len(rows) / per_step),
            max_completion_length=config.max_new_tokens,
            temperature=max(config.temperature, 1e-5),
            top_p=config.top_p,
            top_k=config.top_k,
            shuffle_dataset=False,  # PLE's query order
            use_vllm=select_backend(config.generation_backend, self.device) == "vllm",
            vllm_mode="colocate",
            vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        )
        counter = _CountingReward(self.reward_fn)
        extra_columns = [k for k in rows[0] if k != "prompt"]
        dataset = Dataset.from_list(
            [
                {"prompt": self.builder.render(r["prompt"]), "query": r["prompt"], **{k: r[k] for k in extra_columns}}
                for r in rows
            ]
        )
        self.progress.phase("RLOO training")
        trainer = RLOOTrainer(
            model=self.model, reward_funcs=counter, args=args, train_dataset=dataset, processing_class=self.tokenizer
        )
        trainer.train()
        self.model = trainer.model
        self.write_log(trainer.state.log_history)
        return {"samples": counter.samples, "reward_calls": counter.samples, "gen_tokens": counter.tokens}


class _CountingReward:
    """The training reward in TRL's contract, scored against the plain query, counting what it sees."""

    def __init__(self, reward_fn):
        self.reward_fn, self.samples, self.tokens = reward_fn, 0, 0
        self.__name__ = getattr(reward_fn, "__name__", "reward")

    def __call__(self, prompts, completions, query, completion_ids=None, **columns):
        from ple.rewards import score

        self.samples += len(completions)
        self.tokens += sum(len(ids) for ids in completion_ids or [])
        data = {k: v for k, v in columns.items() if k not in ("trainer_state", "log_extra", "log_metric")}
        return score(self.reward_fn, query, completions, **data)


def _chunks(items: list, k: int) -> list[list]:
    return [items[i : i + k] for i in range(0, len(items), k)]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.3f}"
