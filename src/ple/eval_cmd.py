"""`ple eval`: score one model's generations, or judge two models (or generation files) pairwise."""

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from ple.config import Config
from ple.data import load_task_rows, prompt_text, query_rows
from ple.errors import PLEError
from ple.evaluation import bootstrap_ci, distinct_n, generate_rows, perplexity, response_nll
from ple.io import atomic_write_jsonl, atomic_write_text, read_jsonl, strict_json
from ple.judges import LLMJudge, RewardJudge, compare
from ple.model import adapter_base, autocast, load_causal_lm, load_tokenizer, resolve_device
from ple.principles import PromptBuilder
from ple.rewards import check_reward, config_reward, score

REFERENCE_COLUMNS = ("reference", "response", "chosen")


def _reward_specs(config: Config) -> dict[str, Any]:
    """Name -> reward spec for the training reward and every held-out one."""
    specs = {}
    if config.reward is not None:
        specs["reward"] = config.reward
    extra = config.eval_rewards or []
    for spec in [extra] if isinstance(extra, str) else extra:
        name = spec if isinstance(spec, str) else spec.get("name", "reward")
        specs[f"heldout:{name}"] = [spec] if isinstance(spec, dict) else spec
    return specs


def eval_prompts(config: Config, prompts_file: str | None) -> list[dict]:
    source = prompts_file or config.eval_dataset
    if source is None:
        raise PLEError("no eval prompts: set eval_dataset in the config, or pass --prompts-file")
    column = config.prompt_column if config.task == "none" else "prompt"
    rows = query_rows(
        load_task_rows(source, config.eval_split, config.dataset_config, config.task, config.seed), source, column
    )
    return rows[: config.eval_max_prompts] if config.eval_max_prompts else rows


def evaluate_model(
    model_name: str,
    config: Config,
    prompt_rows: list[dict],
    guided: bool,
    out_dir: Path,
    reference_model: str | None = None,
    progress=None,
) -> dict[str, Any]:
    """Generate for the eval prompts, score, and write completions.jsonl, eval.json and eval.md to out_dir."""
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(adapter_base(model_name) or model_name)
    model = load_causal_lm(model_name, config.dtype).to(device).eval()
    builder = PromptBuilder.from_config(tokenizer, config)
    if guided and not builder.principle:
        raise PLEError("--guided needs a principle in the config")
    reward_fns = {  # built before generating, so a bad reward fails in seconds, not after a long generation
        name: config_reward(spec, config, device) for name, spec in _reward_specs(config).items()
    }
    for fn in reward_fns.values():
        check_reward(fn, prompt_rows[0])
    prompts = [r["prompt"] for r in prompt_rows]
    torch.manual_seed(config.seed)
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


def load_completions(path: str) -> dict[str, dict]:
    """prompt text -> row, from a JSONL file of {prompt, completion} rows (eval outputs) or PLE generation rows."""
    file = Path(path)
    if not file.is_file():
        raise PLEError(f"generation file not found: {path}")
    try:
        rows = read_jsonl(file)
    except json.JSONDecodeError as e:
        raise PLEError(f"{path}: not valid JSONL ({e.msg})") from None
    out: dict[str, dict] = {}
    for i, row in enumerate(rows):
        if "completion" not in row and "y" in row:  # a PLE generations/iter_XXX.jsonl row
            row = {"prompt": row["query"], "completion": row["y"]}
        if "prompt" not in row or "completion" not in row:
            raise PLEError(f"{path} row {i}: needs 'prompt' and 'completion'")
        if not isinstance(row["completion"], str):
            raise PLEError(f"{path} row {i}: 'completion' must be text, got {type(row['completion']).__name__}")
        out.setdefault(prompt_text(row["prompt"]), row)  # a repeated prompt is judged once, on its first row
    return out


def win_rates(outcomes: list[str], n_resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    rows = [{"o": o} for o in outcomes]
    return {
        k: bootstrap_ci(rows, lambda rs, k=k: sum(r["o"] == k for r in rs) / len(rs), n_resamples, seed)
        for k in ("win", "tie", "loss")
    }


def plot_win_rates(rates: dict[str, dict[str, float]], label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.2))
    left = 0.0
    for key, color in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        value = rates[key]["value"]
        ax.barh([label], [value], left=left, color=color, label=f"{key} {value:.0%}")
        left += value
    ax.set(xlim=(0, 1), xlabel="fraction of prompts (judged in both orders)")
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_judge(
    kind: str,
    config: Config,
    url: str | None,
    model: str | None,
    tie_margin: float,
    cache: Path,
    limits: dict | None = None,
):
    """The pairwise judge: the reward judge, or an LLM judge with `limits` (timeout, concurrency, max_retries,
    max_tokens)."""
    if kind == "reward":
        specs = _reward_specs(config)
        if not specs:
            raise PLEError("--judge reward needs a reward (or eval_rewards) in the config")
        spec = specs.get("reward", next(iter(specs.values())))
        fn = config_reward(spec, config, resolve_device(config.device))
        return RewardJudge(fn, tie_margin)
    if not url or not model:
        raise PLEError("--judge llm needs --judge-url and --judge-model")
    limits = limits or {}
    for key in ("timeout", "concurrency", "max_tokens"):
        if key in limits and not limits[key] > 0:
            raise PLEError(f"--judge-{key.replace('_', '-')} must be > 0, got {limits[key]}")
    if limits.get("max_retries", 0) < 0:
        raise PLEError(f"--judge-max-retries must be >= 0, got {limits['max_retries']}")
    return LLMJudge(url, model, cache_path=cache, **limits)


def compare_outputs(
    a: dict[str, dict], b: dict[str, dict], judge, label_a: str, label_b: str, out_dir: Path
) -> dict[str, Any]:
    """Judge A against B on their shared prompts, in both orders; writes compare.json, .md and .png."""
    shared = [p for p in a if p in b]
    if not shared:
        raise PLEError("the two sides share no prompts to compare")
    prompts = [a[p]["prompt"] for p in shared]
    outcomes = compare(judge, prompts, [a[p]["completion"] for p in shared], [b[p]["completion"] for p in shared])
    rates = win_rates(outcomes)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "a": label_a,
        "b": label_b,
        "n_prompts": len(shared),
        "rates": rates,
        "judge_stats": getattr(judge, "stats", {}),
        "only_in_a": len(a) - len(shared),
        "only_in_b": len(b) - len(shared),
    }
    atomic_write_text(out_dir / "compare.json", strict_json(result, indent=2))
    atomic_write_jsonl(
        out_dir / "compare_rows.jsonl",
        [
            {"prompt": p, "a": a[p]["completion"], "b": b[p]["completion"], "outcome": o}
            for p, o in zip(shared, outcomes)
        ],
    )
    plot_win_rates(rates, "A vs B", out_dir / "win_rate.png")
    table = ["| outcome for A | rate | 95% CI |", "|---|---:|---|"]
    table += [f"| {k} | {v['value']:.3f} | [{v['ci_low']:.3f}, {v['ci_high']:.3f}] |" for k, v in rates.items()]
    atomic_write_text(
        out_dir / "compare.md",
        f"# A: `{label_a}` vs B: `{label_b}`\n\n{len(shared)} prompts, "
        "each judged in both orders.\n\n" + "\n".join(table) + "\n\n![win rate](win_rate.png)\n",
    )
    result["table"] = "\n".join(table)
    return result
