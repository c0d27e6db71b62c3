"""DPO, RLOO and GRPO, trained by TRL's trainers on the policy PLE would train (same LoRA, optimiser settings and seed).

Each is a whole run for ple.training.loop: TRL trains, the loop does the rest. A killed run restarts its TRL training;
work cached in the run directory (DPO's pairs) is kept. TRL's step log goes to trl_log.jsonl, and metrics.jsonl
gets one row per iteration from it."""

import json
import math
from typing import Any

import torch

from ple.config_checks import tracker_names
from ple.errors import PLEError
from ple.io import atomic_write_jsonl, atomic_write_text, finite_number, read_jsonl
from ple.rewards import score
from ple.training.harness import Harness
from ple.training.loop import iteration_end, iteration_seed, query_order
from ple.training.policy import mean_of_known, step_share
from ple.training.rundir import TRL_LOG, eval_steps, snapshot_steps
from ple.vllm_backend import select_backend


def trl_batch(config, world: int) -> tuple[int, int]:
    """(rows per micro-batch on each process, micro-batches per optimizer step) for TRL: an optimizer step takes
    batch_size * gradient_accumulation_steps rows whatever the number of processes (ple.training.policy.step_share),
    in equal micro-batches of at most batch_size, as TRL's trainers need them equal."""
    share, most = step_share(config, world)
    micro = max(m for m in range(1, most + 1) if share % m == 0)
    return micro, share // micro


def trl_args(harness: Harness, config_class, completions_per_row: int = 1, **extra):
    """TRL's config for the policy PLE would train: PLE's optimiser settings, batch, seed and precision."""
    config = harness.config
    micro, accumulation = trl_batch(config, harness.dist.world)
    schedule = config.lr_scheduler_type
    return config_class(
        output_dir=str(harness.run_dir.path / "trl"),
        learning_rate=config.learning_rate,
        # transformers' constant schedule ignores a warm-up; its constant_with_warmup is ple's constant one
        lr_scheduler_type="constant_with_warmup" if schedule == "constant" and config.warmup_ratio else schedule,
        warmup_steps=config.warmup_ratio,  # transformers reads a number below 1 as a share of the steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm if config.max_grad_norm > 0 else 1e9,
        per_device_train_batch_size=completions_per_row * micro,
        gradient_accumulation_steps=accumulation,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        seed=config.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=tracker_names(config.report_to),  # TRL's own tracker integrations, under output_dir/trl
        use_cpu=harness.device.type == "cpu",
        bf16=config.dtype == "bfloat16",
        disable_tqdm=False,
        **extra,
    )


def all_queries(harness: Harness, n: int | None = None) -> list[dict]:
    """The first n queries PLE would draw (all it draws over the run by default), in its order."""
    config = harness.config
    n = config.queries_per_iteration * config.iterations if n is None else n
    return [harness.queries[i] for i in query_order(len(harness.queries), 0, n, config.seed, config.shuffle)]


def take_trained_model(harness: Harness, trainer, evaluated: dict[int, dict]) -> list[dict]:
    """The policy TRL trained, without TRL's frozen reference copy of the adapter; TRL's step log written to
    trl_log.jsonl; one metrics row per iteration from it, with the evaluations after each iteration (`evaluated`:
    iterations done -> eval metrics)."""
    harness.policy.adopt(trainer)
    model = harness.policy.model
    for name in list(getattr(model, "peft_config", {})):
        if name != "default":  # TRL's frozen reference copy of the adapter, not part of the policy
            model.delete_adapter(name)
    log = trainer.state.log_history
    if harness.dist.main:
        atomic_write_jsonl(harness.run_dir.path / TRL_LOG, log)
    rows = iteration_rows(log, harness.config.iterations, trainer.state.max_steps)
    return [{**row, **evaluated.get(row["iteration"] + 1, {})} for row in rows]


def iteration_rows(log: list[dict], iterations: int, max_steps: int) -> list[dict]:
    """One row per iteration from TRL's step log: the optimizer steps matched to iteration t (those after
    snapshot_step(t) up to snapshot_step(t + 1); the first starts at step 1) and the mean of each number TRL
    logged at them."""
    steps = [row for row in log if "loss" in row]  # the training steps, not the closing summary
    rows = []
    for t in range(iterations):
        low = snapshot_step(t, iterations, max_steps) if t else 0
        high = snapshot_step(t + 1, iterations, max_steps)
        at = [row for row in steps if low < row["step"] <= high]
        numbers = [{k: v for k, v in row.items() if finite_number(v) and k not in ("step", "epoch")} for row in at]
        keys = dict.fromkeys(k for row in numbers for k in row)
        means = {k: mean_of_known(row.get(k) for row in numbers) for k in keys}
        rows.append({"iteration": t, "optimizer_steps": max(high - low, 0), **means})
    return rows


class DPO:
    optimizes_itself = False  # TRL's trainer owns the optimizer and prepares the model for the launch

    def __init__(self, harness: Harness):
        self.harness, self.config, self.policy = harness, harness.config, harness.policy

    def run(self) -> tuple[dict[str, Any], list[dict]]:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        config = self.config
        pairs, budget = self.preference_pairs()
        if not pairs:
            raise PLEError("dpo: no preference pairs (every sampled pair tied or had no reward)")
        self.policy.progress.phase("DPO training")
        args = trl_args(
            self.harness,
            DPOConfig,
            beta=config.dpo_beta,
            num_train_epochs=config.epochs_per_iteration,
        )
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        trainer = DPOTrainer(
            model=self.policy.model,
            args=args,
            train_dataset=dataset,
            processing_class=self.policy.tokenizer,
        )
        evaluated = add_iteration_ends(self.harness, trainer)
        trainer.train()
        return {**budget, "pairs": len(pairs)}, take_trained_model(self.harness, trainer, evaluated)

    def preference_pairs(self) -> tuple[list[dict], dict[str, Any]]:
        """(prompt, chosen, rejected) rows, cached in pairs.jsonl, and what building them cost."""
        cache = self.harness.run_dir.path / "pairs.jsonl"
        budget_file = self.harness.run_dir.path / "pairs_budget.json"
        self.harness.dist.barrier()  # every process looks before the main one writes
        if cache.is_file() and budget_file.is_file():
            return read_jsonl(cache), json.loads(budget_file.read_text())
        rows = all_queries(self.harness)
        builder = self.policy.builder
        if any(r.get("chosen") is not None and r.get("rejected") is not None for r in rows):
            pairs = [
                {"prompt": builder.render(r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
                for r in rows
                if r.get("chosen") is not None and r.get("rejected") is not None
            ]
            budget = {"samples": 0, "reward_calls": 0, "gen_tokens": 0, "pair_source": "data"}
        else:
            if self.harness.reward_fn is None:
                raise PLEError("dpo needs a reward to rank base-model samples (or data with chosen/rejected)")
            pairs, tokens = self.sampled_pairs(rows)
            budget = {"samples": 2 * len(rows), "reward_calls": 2 * len(rows), "gen_tokens": tokens}
            budget["pair_source"] = "base"
        if self.harness.dist.main:
            atomic_write_jsonl(cache, pairs)
            atomic_write_text(budget_file, json.dumps(budget))
        self.harness.dist.barrier()
        return pairs, budget

    def sampled_pairs(self, rows: list[dict]) -> tuple[list[dict], int]:
        """Two base-model answers to each row, the better-scored one chosen (ties and unscored pairs dropped), in the
        rows' order; each process samples its share. (pairs, tokens generated)."""
        dist, policy = self.harness.dist, self.policy
        torch.manual_seed(iteration_seed(self.config.seed, 0))
        mine = dist.shard(list(range(len(rows))))
        my_rows = [rows[i] for i in mine]
        ids = policy.encode([r["prompt"] for r in my_rows])
        samples, stats = policy.sample(ids + ids)
        scores, _ = self.harness.score(my_rows + my_rows, [x.text for x in samples])
        n = len(my_rows)
        found = []
        for i, a, b, s_a, s_b in zip(mine, samples[:n], samples[n:], scores[:n], scores[n:]):
            if s_a is None or s_b is None or s_a == s_b:
                continue
            (win, s_w), (lose, s_l) = sorted([(a, s_a), (b, s_b)], key=lambda x: -x[1])
            pair = {"chosen": win.text, "rejected": lose.text, "s_chosen": s_w, "s_rejected": s_l}
            found.append((i, {"prompt": policy.builder.render(rows[i]["prompt"]), **pair}))
        pairs = [pair for _, pair in sorted(dist.gather(found), key=lambda x: x[0])]
        return pairs, sum(dist.gather([stats["gen_tokens"]]))


class OnlineRL:
    """TRL's online trainers (RLOO, GRPO): `generations` answers to each of 2 * queries_per_iteration * iterations
    / generations queries in PLE's order, so that the run draws PLE's policy samples, scored by the training
    reward against the plain query."""

    samples_itself = False  # TRL generates, with its own colocated vLLM when the backend is vllm
    optimizes_itself = False  # TRL's trainer owns the optimizer and prepares the model for the launch
    name, trainer, args_class, beta_key = "", "", "", ""  # the method; TRL's trainer, its config; the KL key

    def __init__(self, harness: Harness):
        self.harness, self.config, self.policy = harness, harness.config, harness.policy
        self.use_vllm = uses_vllm(harness)

    def generations(self) -> int:
        return 2  # PLE's two answers per query

    def run(self) -> tuple[dict[str, Any], list[dict]]:
        import trl
        from datasets import Dataset

        config, k = self.config, self.generations()
        rows = all_queries(self.harness, 2 * config.queries_per_iteration * config.iterations // k)
        per_step = k * config.batch_size * config.gradient_accumulation_steps  # completions per optimiser step
        args = trl_args(
            self.harness,
            getattr(trl, self.args_class),
            completions_per_row=k,
            num_generations=k,
            max_steps=math.ceil(k * len(rows) / per_step),
            max_completion_length=config.max_new_tokens,
            temperature=max(config.temperature, 1e-5),
            top_p=config.top_p,
            top_k=config.top_k,
            shuffle_dataset=False,  # PLE's query order
            use_vllm=self.use_vllm,
            vllm_mode=config.vllm_mode,
            vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            vllm_enable_sleep_mode=config.vllm_enable_sleep_mode,
            vllm_max_model_length=config.max_prompt_tokens + config.max_new_tokens,
            vllm_server_base_url=config.vllm_server_url,
            vllm_server_timeout=config.vllm_server_timeout,
            beta=getattr(config, self.beta_key),
        )
        counter = CountingReward(self.harness.reward_fn)
        extra_columns = [c for c in rows[0] if c != "prompt"]
        builder = self.policy.builder
        dataset = Dataset.from_list(
            [
                {"prompt": builder.render(r["prompt"]), "query": r["prompt"], **{c: r[c] for c in extra_columns}}
                for r in rows
            ]
        )
        self.policy.progress.phase(f"{self.name} training")
        trainer = getattr(trl, self.trainer)(
            model=self.policy.model,
            reward_funcs=counter,
            args=args,
            train_dataset=dataset,
            processing_class=self.policy.tokenizer,
        )
        evaluated = add_iteration_ends(self.harness, trainer)
        trainer.train()
        samples = sum(self.harness.dist.gather([counter.samples]))  # each process scores its own completions
        tokens = sum(self.harness.dist.gather([counter.tokens]))
        budget = {"samples": samples, "reward_calls": samples, "gen_tokens": tokens}
        return budget, take_trained_model(self.harness, trainer, evaluated)


class RLOO(OnlineRL):  # the leave-one-out baseline of each of the two answers is the other
    name, trainer, args_class, beta_key = "RLOO", "RLOOTrainer", "RLOOConfig", "rloo_beta"


class GRPO(OnlineRL):
    name, trainer, args_class, beta_key = "GRPO", "GRPOTrainer", "GRPOConfig", "grpo_beta"

    def generations(self) -> int:
        return self.config.grpo_num_generations


def uses_vllm(harness: Harness) -> bool:
    """Whether TRL's online trainer generates with TRL's vLLM. TRL pushes weights with the model's `load_weights`, which
    vLLM's CPU build refuses after start-up (its linear weights are repacked), so not on a CPU."""
    config = harness.config
    if select_backend(config.generation_backend, harness.device, config.vllm_mode) != "vllm":
        return False
    if harness.device.type != "cuda":
        raise PLEError(
            f"{config.method} generates with TRL's vLLM integration, whose weight push fails on vLLM's CPU build; "
            f"set generation_backend: transformers for {config.method} on a CPU"
        )
    return True


def snapshot_step(done: int, iterations: int, max_steps: int) -> int:
    """The optimizer step that matches `done` of `iterations` iterations, when training takes max_steps steps: the
    run's queries are spread evenly over its steps (DPO's pairs and RLOO's prompts are in PLE's query order)."""
    return max(1, round(done * max_steps / iterations))


def add_iteration_ends(harness: Harness, trainer) -> dict[int, dict]:
    """ple.training.loop.iteration_end (a snapshot, an evaluation) at the optimizer step matching the end of each
    iteration that has one. Returns iterations done -> eval metrics, filled as training goes."""
    from transformers import TrainerCallback

    config = harness.config
    snapshots, evals = snapshot_steps(config), eval_steps(config)
    evaluated: dict[int, dict] = {}

    class IterationEnds(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.at: dict[int, list[int]] = {}
            for done in sorted({*snapshots, *evals}):
                self.at.setdefault(snapshot_step(done, config.iterations, state.max_steps), []).append(done)

        def on_step_end(self, args, state, control, **kwargs):
            for done in self.at.get(state.global_step, []):
                harness.policy.adopt(trainer)
                evaluated[done] = iteration_end(harness, done)

    if snapshots or evals:
        trainer.add_callback(IterationEnds())
    return evaluated


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
