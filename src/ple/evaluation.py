"""Evaluation metrics and the paired bootstrap used to put a confidence interval on each change."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ple.generation import generate
from ple.model import response_logprobs

Rows = Sequence[dict[str, Any]]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams of a set of texts (whitespace words, lower-cased)."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


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


@torch.no_grad()
def response_nll(model, rows: Rows, pad_id: int, batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each row's response given its prompt, under `model`."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = [(r["prompt_ids"], r["response_ids"]) for r in rows[start : start + batch_size]]
        sum_logp, n = response_logprobs(model, batch, pad_id)
        out += [(-s, int(k)) for s, k in zip(sum_logp.tolist(), n.tolist())]
    return out


def perplexity(rows: Rows) -> float:
    """Corpus perplexity exp(total NLL / total tokens) from rows with `nll` and `n_tokens`."""
    tokens = sum(r["n_tokens"] for r in rows)
    return math.exp(sum(r["nll"] for r in rows) / tokens) if tokens else float("nan")


def _centred_interval(value: float, resampled: list[float]) -> tuple[float, float]:
    """The resamples' 2.5-97.5% spread around their median, placed on the full-sample value.

    Corpus-level metrics (distinct-n, perplexity) are biased on resamples that repeat rows, so the
    resamples are trusted for the spread but not for the centre.
    """
    low, mid, high = np.percentile(resampled, [2.5, 50, 97.5])
    return float(value + low - mid), float(value + high - mid)


def bootstrap_ci(rows: Rows, metric: Callable[[Rows], float], n_resamples: int = 1000, seed: int = 0) -> dict:
    """A metric on all rows, with a 95% bootstrap CI over rows."""
    rng = np.random.default_rng(seed)
    resampled = [metric([rows[i] for i in rng.integers(0, len(rows), len(rows))]) for _ in range(n_resamples)]
    value = metric(rows)
    low, high = _centred_interval(value, resampled)
    return {"value": value, "ci_low": low, "ci_high": high}


def paired_bootstrap(
    before: Rows, after: Rows, metric: Callable[[Rows], float], n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Metric before and after, their difference, and a 95% CI of the difference.

    Rows are paired by position (the same prompts), so each resample draws the same prompts for both.
    """
    if len(before) != len(after) or not before:
        raise ValueError("paired bootstrap needs two equally long, non-empty row lists")
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(before), len(before))
        deltas.append(metric([after[i] for i in idx]) - metric([before[i] for i in idx]))
    b, a = metric(before), metric(after)
    low, high = _centred_interval(a - b, deltas)
    return {"before": b, "after": a, "delta": a - b, "ci_low": low, "ci_high": high}
