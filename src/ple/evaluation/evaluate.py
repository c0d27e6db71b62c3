"""Evaluate models: generate on the eval prompts, score with the training and held-out rewards, and compute every
registered metric (ple.evaluation.metrics) with a bootstrap CI. `ple eval`, `ple compare` and `ple demo` all
evaluate through `Evaluator`, which loads the tokenizer, the rewards and the base model once for many models."""

import contextlib
import functools
from pathlib import Path
from typing import Any

import torch

from ple.config import Config
from ple.data import load_task_rows, query_rows
from ple.errors import PLEError, first_line
from ple.evaluation.evaluation_views import render_evaluation
from ple.evaluation.layout import write_evaluation
from ple.evaluation.metrics import (
    Metric,
    answer_kl,
    answer_nll,
    applicable,
    continuation_logprobs,
    metric_result,
    response_nll,
    reward_metric,
)
from ple.generation import generate
from ple.io import same_path
from ple.model import (
    adapter_base,
    autocast,
    check_context_length,
    load_causal_lm,
    load_tokenizer,
    merged_lora,
    resolve_device,
    resolve_dtype,
)
from ple.principles import PromptBuilder
from ple.rewards import check_reward, config_reward, score

REFERENCE_COLUMNS = ("reference", "response", "chosen")


HELDOUT = "heldout:"  # a held-out reward's column is HELDOUT + its name (the training reward's is "reward")


def heldout_key(name: str) -> str:
    return HELDOUT + name


def reward_specs(config: Config) -> dict[str, Any]:
    """Name -> reward spec for the training reward and every held-out one."""
    specs = {}
    if config.reward is not None:
        specs["reward"] = config.reward
    extra = config.eval_rewards or []
    for spec in [extra] if isinstance(extra, str) else extra:
        name = spec if isinstance(spec, str) else spec.get("name", "reward")
        specs[heldout_key(name)] = [spec] if isinstance(spec, dict) else spec
    return specs


def judge_reward_name(config: Config) -> str:
    """The reward that judges win rates and differences: the first held-out one, else the training reward."""
    return next((k for k in reward_specs(config) if k.startswith(HELDOUT)), "reward")


def eval_prompts(config: Config, prompts_file: str | None) -> list[dict]:
    source = prompts_file or config.eval_dataset
    if source is None:
        raise PLEError("no eval prompts: set eval_dataset in the config, or pass --prompts-file")
    column = config.prompt_column if config.task == "none" else "prompt"
    rows = query_rows(
        load_task_rows(source, config.eval_split, config.dataset_config, config.task, config.seed), source, column
    )
    return rows[: config.eval_max_prompts] if config.eval_max_prompts else rows


def generate_rows(
    model,
    tokenizer,
    builder,
    prompts: list,
    config,
    guided: bool = False,
    progress=None,
    phase: str = "generating",
    running=contextlib.nullcontext,
    after_batch=None,
) -> list[dict]:
    """One completion per prompt (plain by default), with the token ids kept for perplexity. Each batch is sampled
    from `running(model)` (a context giving the module to run); with `after_batch`, the batch's rows and their
    samples' next-token log-probabilities go to `after_batch(rows, logprobs)` before the next batch is drawn, so
    that only one batch of them is held."""
    check_context_length(model, config)
    ids, _ = builder.encode(prompts, guided, config.max_prompt_tokens)
    batch = config.generation_batch_size or 64
    if progress is not None:
        progress.phase(phase, total=-(-len(ids) // batch))
    rows = []
    for start in range(0, len(ids), batch):
        with running(model) as answering:
            samples = generate(
                answering,
                tokenizer,
                ids[start : start + batch],
                config.max_new_tokens,
                config.temperature,
                config.top_p,
                config.top_k,
                keep_logprobs=after_batch is not None,
            )
        batch_rows = [
            {"prompt": p, "completion": s.text, "prompt_ids": s.prompt_ids, "response_ids": s.response_ids}
            for p, s in zip(prompts[start : start + batch], samples)
        ]
        if after_batch is not None:
            after_batch(batch_rows, [s.logprobs for s in samples])
        rows += batch_rows
        if progress is not None:
            progress.step()
    return rows


class Evaluator:
    """Evaluates any number of models on the same settings, loading what they share once: the tokenizer, every
    reward (the training one and the held-out ones) and the base model.

    A LoRA adapter is evaluated on the loaded base model, never on a second copy of it: its answers are generated
    with the adapter merged into the weights for the call (fp32, as training does; ple.model.merged_lora) or
    active (bf16), and its answers' perplexity under the base model comes from the same weights with the adapter
    disabled. The adapter is unloaded afterwards, leaving the base model as it was loaded."""

    def __init__(
        self, config: Config, reference_model: str | None = None, guided: bool = False, rewards: dict | None = None
    ):
        """`rewards`: name -> reward function for those already loaded (the training reward of a run in progress)."""
        self.config, self.guided, self.reference_name = config, guided, reference_model
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.models: dict[str, Any] = {}  # name -> a loaded plain model (the base model, a reference model)
        self.tokenizer = load_tokenizer(config.model)
        self.builder = PromptBuilder.from_config(self.tokenizer, config)
        if guided and not self.builder.principle:
            raise PLEError("--guided needs a principle in the config")
        if reference_model is not None:  # loaded now, so that a bad name fails before any generation
            self.model(reference_model)
        # Built before generating, so a bad reward fails in seconds, not after a long generation.
        given = rewards or {}
        self.rewards = {
            name: given[name] if name in given else config_reward(spec, config, self.device)
            for name, spec in reward_specs(config).items()
        }

    def check(self, prompt_rows: list[dict]) -> None:
        for fn in self.rewards.values():
            check_reward(fn, prompt_rows[0])

    def model(self, name: str):
        """A plain (non-adapter) model by name, loaded on first use."""
        if name not in self.models:
            model = load_causal_lm(name, self.dtype, self.config.attn_implementation)
            self.models[name] = model.to(self.device).eval()
        return self.models[name]

    @contextlib.contextmanager
    def policy(self, name: str):
        """(the model that answers, the reference model of its perplexity, the base model of its KL) for `name`,
        an adapter or a model. The base model is the config's model (an adapter's own base when it has another)."""
        base = adapter_base(name)
        if base is None:
            self.check_tokenizer(name)
            yield self.model(name), self.model(self.reference_name or name), self.model(self.config.model)
            return
        from peft import PeftModel

        base = self.config.model if same_path(base, self.config.model) else base
        plain = self.model(base)
        try:
            wrapped = PeftModel.from_pretrained(plain, name).eval()
        except Exception as e:
            raise PLEError(f"could not load adapter '{name}': {first_line(e)}") from None
        try:
            without = _AdapterDisabled(wrapped)
            yield wrapped, self.model(self.reference_name) if self.reference_name else without, without
        finally:
            self.models[base] = wrapped.unload()

    @contextlib.contextmanager
    def trained(self, model):
        """((model, perplexity reference, KL base), the reference's name) for a policy in training, in memory, as
        `policy` gives them for its saved form: a LoRA policy's base is itself with the adapter disabled (no second
        copy); a fully fine-tuned one's is the config's model, loaded on first use. In eval mode in the block."""
        was_training = model.training
        model.eval()
        try:
            if getattr(model, "peft_config", None):
                without = _AdapterDisabled(model)
                yield (model, without, without), self.config.model
            else:
                yield (model, model, self.model(self.config.model)), "the policy in training"
        finally:
            model.train(was_training)

    def check_tokenizer(self, name: str) -> None:
        """A model is generated, scored and compared with the base model through the base model's tokenizer, so
        one with another vocabulary is one line (not an IndexError inside the KL)."""
        if same_path(name, self.config.model):
            return
        if load_tokenizer(name).get_vocab() != self.tokenizer.get_vocab():
            raise PLEError(
                f"{name} has another tokenizer than the base model {self.config.model}, whose tokenizer, KL and "
                "perplexity the evaluation uses; evaluate it with a config whose model is its own base model"
            )

    def evaluate(
        self, name: str, prompt_rows: list[dict], out_dir: Path, seed: int | None = None, progress=None
    ) -> dict[str, Any]:
        """Generate for the prompts (sampling seeded with `seed`, config.seed by default), score, and write
        completions.jsonl, eval.json and eval.md to out_dir."""
        with self.policy(name) as models:
            reference_label = self.reference_name or adapter_base(name) or name
            return self.evaluate_loaded(name, models, reference_label, prompt_rows, out_dir, seed, progress)

    def evaluate_loaded(
        self, name: str, models, reference_label: str, prompt_rows: list[dict], out_dir: Path, seed=None, progress=None
    ) -> dict[str, Any]:
        """`evaluate` of loaded models: (the model that answers, the reference of its perplexity, named
        reference_label, the base model of its KL), as `policy` or `trained` give them."""
        config = self.config
        self.check(prompt_rows)
        model, reference, base = models
        with autocast(self.dtype, self.device):
            torch.manual_seed(config.seed if seed is None else seed)
            rows = generate_rows(
                model,
                self.tokenizer,
                self.builder,
                [r["prompt"] for r in prompt_rows],
                config,
                self.guided,
                progress,
                running=functools.partial(answering_model, dtype=self.dtype),
                after_batch=functools.partial(self.add_kl, model=model, reference=reference, base=base),
            )
            self.score(rows, prompt_rows)
            self.add_reference_nll(rows, prompt_rows, model)
        metrics = {m.name: metric_result(m, rows) for m in applicable(rows, self.reward_metrics())}
        metrics["generation_perplexity"]["reference_model"] = reference_label
        metrics["kl"]["between"] = kl_note(config)
        result = {"model": name, "guided": self.guided, "n_prompts": len(rows), "metrics": metrics}
        write_evaluation(out_dir, rows, result)
        render_evaluation(out_dir)
        return result

    def reward_metrics(self) -> list[Metric]:
        return [reward_metric(name, reward_label(name)) for name in self.rewards]

    def score(self, rows: list[dict], prompt_rows: list[dict]) -> None:
        prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
        columns = {k: [r.get(k) for r in prompt_rows] for k in prompt_rows[0] if k != "prompt"}
        for name, fn in self.rewards.items():
            for row, s in zip(rows, score(fn, prompts, completions, **columns)):
                row[name] = s

    def add_kl(self, rows: list[dict], logprobs: list, model, reference, base) -> None:
        """Each answer's KL to the base model (exact and k1) and its NLL under the reference model, from the
        policy's own next-token log-probabilities (kept by the generation) and one pass of the base model; none
        when the base model is the policy, whose KL is then exactly 0."""
        pad = self.tokenizer.pad_token_id
        base_logprobs = logprobs
        if base is not model:
            base_logprobs = [
                lq
                for batch in (rows[i : i + 16] for i in range(0, len(rows), 16))
                for lq in continuation_logprobs(
                    base, [r["prompt_ids"] for r in batch], [r["response_ids"] for r in batch], pad
                )
            ]
        for row, lp, lq in zip(rows, logprobs, base_logprobs):
            row["kl"], row["kl_k1"] = answer_kl(lp, lq, row["response_ids"])
            if reference is model or reference is base:
                row["nll"] = answer_nll(lp if reference is model else lq, row["response_ids"])
                row["n_tokens"] = len(row["response_ids"])
        if reference is not model and reference is not base:  # a separate reference model: its own pass
            for row, (nll, n) in zip(rows, response_nll(reference, rows, pad)):
                row.update(nll=nll, n_tokens=n)

    def add_reference_nll(self, rows: list[dict], prompt_rows: list[dict], model) -> None:
        """With references in the data, each reference's NLL under the evaluated model."""
        ref_column = next((c for c in REFERENCE_COLUMNS if c in prompt_rows[0]), None)
        if ref_column is None:
            return
        eos = [self.tokenizer.eos_token_id]
        ref_rows = [
            {
                "prompt_ids": r["prompt_ids"],
                "response_ids": self.tokenizer(str(p[ref_column]), add_special_tokens=False)["input_ids"] + eos,
            }
            for r, p in zip(rows, prompt_rows)
        ]
        pad = self.tokenizer.pad_token_id
        for row, p, (nll, n) in zip(rows, prompt_rows, response_nll(model, ref_rows, pad)):
            row.update(reference=str(p[ref_column]), ref_nll=nll, ref_n_tokens=n)


def kl_note(config: Config) -> str:
    """Which distributions the KL is between: the policy's own next-token distributions against the base model's,
    summed over the answers this evaluation sampled."""
    drawn = (config.temperature, config.top_p, config.top_k)
    if drawn == (1.0, 1.0, 0):
        return "KL(pi || pi_base) per answer, answers drawn from pi itself (temperature 1): an unbiased estimate"
    return (
        "sum over the answer's tokens of KL(pi || pi_base) of the temperature-1 next-token distributions, for "
        f"answers drawn at temperature {config.temperature:g}, top_p {config.top_p:g}, top_k {config.top_k}: "
        "not the sequence-level KL of the sampling distribution"
    )


class _AdapterDisabled:
    """The base model of a peft model: calls run with its adapter disabled; everything else is the model's."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def __call__(self, *args, **kwargs):
        with self.wrapped.disable_adapter():
            return self.wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


def answering_model(model, dtype: str):
    """fp32: the adapter merged into the weights for the call (one matmul per layer); bf16: the adapter kept
    separate, because a bf16 weight would round most of a small update away."""
    return merged_lora(model) if dtype == "float32" else contextlib.nullcontext(model)


def reward_label(name: str) -> str:
    return f"held-out reward {name.removeprefix(HELDOUT)}" if name.startswith(HELDOUT) else "training reward"
