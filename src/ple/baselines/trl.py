"""DPO and RLOO, trained by TRL's trainers on the policy PLE would train (same LoRA, optimiser settings and seed).

A killed run restarts its TRL training; work cached in the run directory (DPO's pairs) is kept."""

import json
import math
import time
from typing import Any

import torch

from ple.errors import PLEError
from ple.io import atomic_write_jsonl, atomic_write_text, read_jsonl
from ple.progress import Progress
from ple.rewards import score
from ple.training.loop import Trainer, TrainOutput, iteration_seed, query_order
from ple.training.rundir import BUDGET, FINAL, METRICS_JSONL, WARMUP, snapshot_dir, snapshot_steps
from ple.training.trackers import tracker_names
from ple.vllm_backend import select_backend


class TRLBaseline(Trainer):
    def train(self, resume: bool = False) -> TrainOutput:
        final = self.run_dir.path / FINAL
        if resume and (self.run_dir.path / BUDGET).is_file() and final.is_dir():
            return TrainOutput(final, self.run_dir.metrics())
        if self.dist.world > 1 or self.dist.accelerator is not None:
            raise PLEError(
                f"method={self.config.method} runs in one process without DeepSpeed; launch it with plain python"
            )
        try:
            start = self.open_run(resume)
            started = time.perf_counter()
            with Progress(total=1, description=self.config.method) as progress:
                self.policy.progress = progress
                if start == WARMUP:  # as every method gets it; TRL's reference is then a copy of the warmed-up adapter
                    self.sft_warmup()
                budget = self.run_trl()
                progress.advance()
            model = self.policy.model
            for name in list(getattr(model, "peft_config", {})):
                if name != "default":  # TRL's frozen reference copy of the adapter, not part of the policy
                    model.delete_adapter(name)
            self.policy.save_final(self.run_dir.path)
            self.run_dir.write_budget({**budget, "seconds": time.perf_counter() - started})
            return TrainOutput(final, self.run_dir.metrics())
        finally:
            self.run_dir.close()

    def run_trl(self) -> dict[str, Any]:
        raise NotImplementedError

    def trl_args(self, config_class, **extra):
        config = self.config
        return config_class(
            output_dir=str(self.run_dir.path / "trl"),
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
            report_to=tracker_names(config.report_to),  # TRL's own tracker integrations, under output_dir/trl
            use_cpu=self.device.type == "cpu",
            bf16=config.dtype == "bfloat16",
            disable_tqdm=False,
            **extra,
        )

    def callbacks(self) -> list:
        if not self.config.snapshot_every:
            return []
        return [snapshot_callback(self.run_dir.path, self.config, self.policy.tokenizer)]

    def write_log(self, log_history: list[dict]) -> None:
        rows = [{"step": i, **row} for i, row in enumerate(log_history)]  # TRL's logging steps, not iterations
        atomic_write_jsonl(self.run_dir.path / METRICS_JSONL, rows)

    def all_queries(self) -> list[dict]:
        """The queries PLE would draw over the whole run, in its order."""
        config = self.config
        n = config.queries_per_iteration * config.iterations
        return [self.queries[i] for i in query_order(len(self.queries), 0, n, config.seed, config.shuffle)]


class DPOBaseline(TRLBaseline):
    def run_trl(self) -> dict[str, Any]:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        config = self.config
        pairs, budget = self.preference_pairs()
        if not pairs:
            raise PLEError("dpo: no preference pairs (every sampled pair tied or had no reward)")
        self.policy.progress.phase("DPO training")
        args = self.trl_args(
            DPOConfig,
            beta=config.dpo_beta,
            per_device_train_batch_size=config.batch_size,
            num_train_epochs=config.epochs_per_iteration,
        )
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        trainer = DPOTrainer(
            model=self.policy.model,
            args=args,
            train_dataset=dataset,
            processing_class=self.policy.tokenizer,
            callbacks=self.callbacks(),
        )
        trainer.train()
        self.policy.model = trainer.model
        self.write_log(trainer.state.log_history)
        return {**budget, "pairs": len(pairs)}

    def preference_pairs(self) -> tuple[list[dict], dict[str, Any]]:
        """(prompt, chosen, rejected) rows, cached in pairs.jsonl, and what building them cost."""
        cache = self.run_dir.path / "pairs.jsonl"
        budget_file = self.run_dir.path / "pairs_budget.json"
        if cache.is_file() and budget_file.is_file():
            return read_jsonl(cache), json.loads(budget_file.read_text())
        rows = self.all_queries()
        builder = self.policy.builder
        if any(r.get("chosen") is not None and r.get("rejected") is not None for r in rows):
            pairs = [
                {"prompt": builder.render(r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in rows
                if r.get("chosen") is not None and r.get("rejected") is not None
            ]
            budget = {"samples": 0, "reward_calls": 0, "gen_tokens": 0, "pair_source": "data"}
        else:
            if self.reward_fn is None:
                raise PLEError("dpo needs a reward to rank base-model samples (or data with chosen/rejected)")
            torch.manual_seed(iteration_seed(self.config.seed, 0))
            texts = [builder.render(r["prompt"]) for r in rows]
            ids = self.policy.encode([r["prompt"] for r in rows])
            samples, stats = self.policy.sample(ids + ids)
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


class RLOOBaseline(TRLBaseline):
    samples_itself = False  # RLOOTrainer generates, with its own colocated vLLM when the backend is vllm

    def uses_vllm(self) -> bool:
        """Whether RLOOTrainer generates with TRL's vLLM. TRL pushes weights with the model's `load_weights`,
        which vLLM's CPU build refuses after start-up (its linear weights are repacked), so not on a CPU."""
        config = self.config
        if select_backend(config.generation_backend, self.device, config.vllm_mode) != "vllm":
            return False
        if self.device.type != "cuda":
            raise PLEError(
                "rloo generates with TRL's vLLM integration, whose weight push fails on vLLM's CPU build; "
                "set generation_backend: transformers for rloo on a CPU"
            )
        return True

    def run_trl(self) -> dict[str, Any]:
        from datasets import Dataset
        from trl import RLOOConfig, RLOOTrainer

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
            use_vllm=self.uses_vllm(),
            vllm_mode=config.vllm_mode,
            vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            vllm_enable_sleep_mode=config.vllm_enable_sleep_mode,
            vllm_max_model_length=config.max_prompt_tokens + config.max_new_tokens,
            vllm_server_base_url=config.vllm_server_url,
            vllm_server_timeout=config.vllm_server_timeout,
        )
        counter = CountingReward(self.reward_fn)
        extra_columns = [k for k in rows[0] if k != "prompt"]
        builder = self.policy.builder
        dataset = Dataset.from_list(
            [
                {"prompt": builder.render(r["prompt"]), "query": r["prompt"], **{k: r[k] for k in extra_columns}}
                for r in rows
            ]
        )
        self.policy.progress.phase("RLOO training")
        trainer = RLOOTrainer(
            model=self.policy.model,
            reward_funcs=counter,
            args=args,
            train_dataset=dataset,
            processing_class=self.policy.tokenizer,
            callbacks=self.callbacks(),
        )
        trainer.train()
        self.policy.model = trainer.model
        self.write_log(trainer.state.log_history)
        return {"samples": counter.samples, "reward_calls": counter.samples, "gen_tokens": counter.tokens}


def snapshot_step(done: int, iterations: int, max_steps: int) -> int:
    """The optimizer step that matches `done` of `iterations` iterations, when training takes max_steps steps: the
    run's queries are spread evenly over its steps (DPO's pairs and RLOO's prompts are in PLE's query order)."""
    return max(1, round(done * max_steps / iterations))


def snapshot_callback(run_dir, config, tokenizer):
    """A TRL (transformers) callback that saves the policy's adapter to snapshots/step_NNN at the optimizer step
    matching each of config's snapshot steps, as PLE's loop does after iteration NNN."""
    from transformers import TrainerCallback

    from ple.io import replace_dir, temporary

    class SnapshotCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.at = {snapshot_step(d, config.iterations, state.max_steps): d for d in snapshot_steps(config)}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            done = self.at.get(state.global_step)
            if done is None or not state.is_world_process_zero:
                return
            path = snapshot_dir(run_dir, done)
            tmp = temporary(path)
            adapters = list(getattr(model, "peft_config", {}))
            # TRL may hold a frozen reference copy of the adapter beside the policy's own ("default").
            selected = {"selected_adapters": ["default"]} if "default" in adapters and len(adapters) > 1 else {}
            model.save_pretrained(tmp, **selected)
            tokenizer.save_pretrained(tmp)
            replace_dir(tmp, path)

    return SnapshotCallback()


class CountingReward:
    """The training reward in TRL's contract, scored against the plain query, counting what it sees."""

    def __init__(self, reward_fn):
        self.reward_fn, self.samples, self.tokens = reward_fn, 0, 0
        self.__name__ = getattr(reward_fn, "__name__", "reward")

    def __call__(self, prompts, completions, query, completion_ids=None, **columns):
        self.samples += len(completions)
        self.tokens += sum(len(ids) for ids in completion_ids or [])
        data = {k: v for k, v in columns.items() if k not in ("trainer_state", "log_extra", "log_metric")}
        return score(self.reward_fn, query, completions, **data)
