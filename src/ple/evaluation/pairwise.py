"""Pairwise comparison of two models' generations, judged in both orders (ple.evaluation.judges): win, tie and loss
rates with bootstrap CIs, written as compare.json (its views: ple.evaluation.evaluation_views)."""

import json
import math
from pathlib import Path
from typing import Any

from ple.config import Config
from ple.data import prompt_text
from ple.errors import PLEError
from ple.evaluation.evaluate import judge_reward_name, reward_specs
from ple.evaluation.evaluation_views import render_comparison
from ple.evaluation.judges import UNSCORED, LLMJudge, RewardJudge, both_orders
from ple.evaluation.layout import write_comparison
from ple.evaluation.stats import bootstrap_ci
from ple.io import read_jsonl
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
    """Judge A against B on their shared prompts, in both orders; writes compare.json and its views."""
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
    rows = [
        {"prompt": p, "a": a[p]["completion"], "b": b[p]["completion"], "outcome": o} for p, o in zip(shared, outcomes)
    ]
    write_comparison(out_dir, result, rows)
    render_comparison(out_dir)
    return result
