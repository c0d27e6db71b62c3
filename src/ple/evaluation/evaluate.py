"""Evaluate a model: generate on the eval prompts, score with the training and held-out rewards, and measure
distinct-n, perplexity and (with references) BLEU, each with a bootstrap CI. `ple eval`, `ple compare` and
`ple demo` all evaluate through `evaluate_model`."""

import statistics
from pathlib import Path
from typing import Any

import torch

from ple.config import Config
from ple.data import load_task_rows, query_rows
from ple.errors import PLEError
from ple.evaluation.metrics import bootstrap_ci, distinct_n, perplexity, response_nll
from ple.generation import generate
from ple.io import atomic_write_jsonl, atomic_write_text, strict_json
from ple.model import adapter_base, autocast, load_causal_lm, load_tokenizer, resolve_device
from ple.principles import PromptBuilder
from ple.rewards import check_reward, config_reward, score

REFERENCE_COLUMNS = ("reference", "response", "chosen")


def reward_specs(config: Config) -> dict[str, Any]:
    """Name -> reward spec for the training reward and every held-out one."""
    specs = {}
    if config.reward is not None:
        specs["reward"] = config.reward
    extra = config.eval_rewards or []
    for spec in [extra] if isinstance(extra, str) else extra:
        name = spec if isinstance(spec, str) else spec.get("name", "reward")
        specs[f"heldout:{name}"] = [spec] if isinstance(spec, dict) else spec
    return specs


def judge_reward_name(config: Config) -> str:
    """The reward that judges win rates and differences: the first held-out one, else the training reward."""
    return next((k for k in reward_specs(config) if k.startswith("heldout:")), "reward")


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
    model, tokenizer, builder, prompts: list, config, guided: bool = False, progress=None, phase: str = "generating"
) -> list[dict]:
    """One completion per prompt (plain by default), with the token ids kept for perplexity."""
    ids, _ = builder.encode(prompts, guided, config.max_prompt_tokens)
    batch = config.generation_batch_size or 64
    if progress is not None:
        progress.phase(phase, total=-(-len(ids) // batch))
    rows = []
    for start in range(0, len(ids), batch):
        samples = generate(
            model,
            tokenizer,
            ids[start : start + batch],
            config.max_new_tokens,
            config.temperature,
            config.top_p,
            config.top_k,
        )
        rows += [
            {"prompt": p, "completion": s.text, "prompt_ids": s.prompt_ids, "response_ids": s.response_ids}
            for p, s in zip(prompts[start : start + batch], samples)
        ]
        if progress is not None:
            progress.step()
    return rows


def evaluate_model(
    model_name: str,
    config: Config,
    prompt_rows: list[dict],
    guided: bool,
    out_dir: Path,
    reference_model: str | None = None,
    progress=None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Generate for the eval prompts (sampling seeded with `seed`, config.seed by default), score, and write
    completions.jsonl, eval.json and eval.md to out_dir."""
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(adapter_base(model_name) or model_name)
    model = load_causal_lm(model_name, config.dtype).to(device).eval()
    builder = PromptBuilder.from_config(tokenizer, config)
    if guided and not builder.principle:
        raise PLEError("--guided needs a principle in the config")
    reward_fns = {  # built before generating, so a bad reward fails in seconds, not after a long generation
        name: config_reward(spec, config, device) for name, spec in reward_specs(config).items()
    }
    for fn in reward_fns.values():
        check_reward(fn, prompt_rows[0])
    prompts = [r["prompt"] for r in prompt_rows]
    torch.manual_seed(config.seed if seed is None else seed)
    with autocast(config.dtype, device):
        rows = generate_rows(model, tokenizer, builder, prompts, config, guided=guided, progress=progress)
    completions = [r["completion"] for r in rows]
    columns = {k: [r.get(k) for r in prompt_rows] for k in prompt_rows[0] if k != "prompt"}

    metrics: dict[str, Any] = {}
    for name, fn in reward_fns.items():
        for row, s in zip(rows, score(fn, prompts, completions, **columns)):
            row[name] = s
        metrics[name] = bootstrap_ci(rows, lambda rs, k=name: _mean_or_nan(r[k] for r in rs))
    metrics["distinct_1"] = bootstrap_ci(rows, lambda rs: distinct_n([r["completion"] for r in rs], 1))
    metrics["distinct_2"] = bootstrap_ci(rows, lambda rs: distinct_n([r["completion"] for r in rs], 2))
    metrics["mean_length"] = bootstrap_ci(rows, lambda rs: statistics.fmean(len(r["completion"].split()) for r in rs))

    reference_name = reference_model or adapter_base(model_name) or model_name
    reference = model if reference_name == model_name else load_causal_lm(reference_name, config.dtype).to(device)
    with autocast(config.dtype, device):
        for row, (nll, n) in zip(rows, response_nll(reference, rows, tokenizer.pad_token_id)):
            row.update(nll=nll, n_tokens=n)
    metrics["generation_perplexity"] = bootstrap_ci(rows, perplexity)
    metrics["generation_perplexity"]["reference_model"] = reference_name

    ref_column = next((c for c in REFERENCE_COLUMNS if c in prompt_rows[0]), None)
    if ref_column is not None:
        import sacrebleu

        references = [str(r[ref_column]) for r in prompt_rows]
        for row, ref in zip(rows, references):
            row["reference"] = ref
        metrics["bleu"] = bootstrap_ci(
            rows, lambda rs: sacrebleu.corpus_bleu([r["completion"] for r in rs], [[r["reference"] for r in rs]]).score
        )
        ref_rows = [
            {
                "prompt_ids": r["prompt_ids"],
                "response_ids": tokenizer(ref, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
            }
            for r, ref in zip(rows, references)
        ]
        with autocast(config.dtype, device):
            for row, (nll, n) in zip(ref_rows, response_nll(model, ref_rows, tokenizer.pad_token_id)):
                row.update(nll=nll, n_tokens=n)
        metrics["reference_perplexity"] = bootstrap_ci(ref_rows, perplexity)

    result = {"model": model_name, "guided": guided, "n_prompts": len(rows), "metrics": metrics}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(
        out_dir / "completions.jsonl",
        [{k: v for k, v in r.items() if k not in ("prompt_ids", "response_ids")} for r in rows],
    )
    atomic_write_text(out_dir / "eval.json", strict_json(result, indent=2))
    lines = [
        f"# Evaluation of `{model_name}`",
        "",
        f"{len(rows)} prompts, {'guided' if guided else 'plain'} prompt.",
        "",
        "| metric | value | 95% CI |",
        "|---|---:|---|",
    ]
    lines += [f"| {k} | {v['value']:.4f} | [{v['ci_low']:.4f}, {v['ci_high']:.4f}] |" for k, v in metrics.items()]
    atomic_write_text(out_dir / "eval.md", "\n".join(lines) + "\n")
    return result


def _mean_or_nan(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")
