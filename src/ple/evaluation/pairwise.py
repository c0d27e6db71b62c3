"""Pairwise comparison of two models' generations, judged in both orders (ple.evaluation.judges): win, tie and loss
rates with bootstrap CIs, a JSON/Markdown result and a chart."""

import json
import math
from pathlib import Path
from typing import Any

from ple.config import Config
from ple.data import prompt_text
from ple.errors import PLEError
from ple.evaluation.evaluate import judge_reward_name, reward_specs
from ple.evaluation.judges import UNSCORED, LLMJudge, RewardJudge, both_orders
from ple.evaluation.layout import COMPARE_JSON, COMPARE_MD, COMPARE_ROWS, WIN_RATE_PNG
from ple.evaluation.stats import bootstrap_ci
from ple.io import atomic_write_jsonl, atomic_write_text, read_jsonl, strict_json
from ple.model import resolve_device
from ple.rewards import config_reward


class Completions(dict):
    """prompt text -> row; `repeated` counts the rows whose prompt came again (judged once, on its first row)."""

    repeated = 0


def load_completions(path: str) -> Completions:
    """prompt text -> row, from a JSONL file of {prompt, completion} rows (eval outputs) or PLE generation rows."""
    file = Path(path)
    if not file.is_file():
        raise PLEError(f"generation file not found: {path}")
    try:
        rows = read_jsonl(file)
    except json.JSONDecodeError as e:
        raise PLEError(f"{path}: not valid JSONL ({e.msg})") from None
    out = Completions()
    for i, row in enumerate(rows):
        if "completion" not in row and "y" in row:  # a PLE generations/iter_XXX.jsonl row
            row = {"prompt": row["query"], "completion": row["y"]}
        if "prompt" not in row or "completion" not in row:
            raise PLEError(f"{path} row {i}: needs 'prompt' and 'completion'")
        if not isinstance(row["completion"], str):
            raise PLEError(f"{path} row {i}: 'completion' must be text, got {type(row['completion']).__name__}")
        key = prompt_text(row["prompt"])
        if key in out:
            out.repeated += 1
        out.setdefault(key, row)
    return out


def win_rates(outcomes: list[str], n_resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Win, tie and loss rates with 95% bootstrap CIs; NaN when no pair was judged."""
    if not outcomes:
        return {k: {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan} for k in ("win", "tie", "loss")}
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
        specs = reward_specs(config)
        if not specs:
            raise PLEError("--judge reward needs a reward (or eval_rewards) in the config")
        fn = config_reward(specs[judge_reward_name(config)], config, resolve_device(config.device))
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


def judge_pair(
    a: dict[str, dict], b: dict[str, dict], judge, label_a: str, label_b: str, out_dir: Path
) -> dict[str, Any]:
    """Judge A against B on their shared prompts, in both orders; writes compare.json, .md and .png."""
    shared = [p for p in a if p in b]
    if not shared:
        raise PLEError("the two sides share no prompts to compare")
    prompts = [a[p]["prompt"] for p in shared]
    judged = both_orders(judge, prompts, [a[p]["completion"] for p in shared], [b[p]["completion"] for p in shared])
    unscored = sum(o == UNSCORED for o in judged)
    if unscored == len(judged):
        raise PLEError(f"the judge gave no verdict on any of the {unscored} pairs, so there is nothing to compare")
    shared, outcomes = [p for p, o in zip(shared, judged) if o != UNSCORED], [o for o in judged if o != UNSCORED]
    rates = win_rates(outcomes)
    notes = [
        f"{n} {what}"
        for n, what in (
            (len(a) - len(shared) - unscored, "prompt(s) only in A were left out"),
            (len(b) - len(shared) - unscored, "prompt(s) only in B were left out"),
            (getattr(a, "repeated", 0), "repeated prompt(s) in A were judged once, on their first row"),
            (getattr(b, "repeated", 0), "repeated prompt(s) in B were judged once, on their first row"),
            (unscored, "pair(s) the judge gave no verdict on were left out (not counted as ties)"),
        )
        if n
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "a": label_a,
        "b": label_b,
        "n_prompts": len(shared),
        "rates": rates,
        "judge_stats": getattr(judge, "stats", {}),
        "only_in_a": len(a) - len(shared) - unscored,
        "only_in_b": len(b) - len(shared) - unscored,
        "unscored": unscored,
        "notes": notes,
    }
    atomic_write_text(out_dir / COMPARE_JSON, strict_json(result, indent=2))
    atomic_write_jsonl(
        out_dir / COMPARE_ROWS,
        [
            {"prompt": p, "a": a[p]["completion"], "b": b[p]["completion"], "outcome": o}
            for p, o in zip(shared, outcomes)
        ],
    )
    plot_win_rates(rates, "A vs B", out_dir / WIN_RATE_PNG)
    table = ["| outcome for A | rate | 95% CI |", "|---|---:|---|"]
    table += [f"| {k} | {v['value']:.3f} | [{v['ci_low']:.3f}, {v['ci_high']:.3f}] |" for k, v in rates.items()]
    atomic_write_text(
        out_dir / COMPARE_MD,
        f"# A: `{label_a}` vs B: `{label_b}`\n\n{len(shared)} prompts, "
        "each judged in both orders.\n\n" + "\n".join(table) + "\n\n![win rate](win_rate.png)\n",
    )
    result["table"] = "\n".join(table)
    return result
