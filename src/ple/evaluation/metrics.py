"""Evaluation metrics (distinct-n, perplexity) and the bootstrap that puts a confidence interval on each."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ple.logprobs import response_logprobs

Rows = Sequence[dict[str, Any]]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams of a set of texts (whitespace words, lower-cased)."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.lower().split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


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


def bootstrap_interval(n: int, statistic: Callable[[np.ndarray], float], n_resamples: int, seed: int):
    """A 95% bootstrap interval of `statistic(indices)` over n rows resampled with replacement: the resamples
    (drawn by scipy.stats.bootstrap) give the spread, 2.5-97.5% around their median, placed on the full-sample
    value.

    Corpus-level metrics (distinct-n, perplexity) are biased on resamples that repeat rows: a repeated completion
    repeats its n-grams, so distinct-n falls on nearly every resample. The resamples are therefore trusted for the
    spread but not for the centre. (BCa, scipy's default, corrects the bias from the share of resamples below the
    estimate; for distinct-n that share is near 0 or 1, where its interval collapses and can miss the estimate.)"""
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.arange(n),),
        statistic,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, mid, high = np.percentile(result.bootstrap_distribution, [2.5, 50, 97.5])
    value = statistic(np.arange(n))
    return float(value + low - mid), float(value + high - mid)


def bootstrap_ci(rows: Rows, metric: Callable[[Rows], float], n_resamples: int = 1000, seed: int = 0) -> dict:
    """A metric on all rows, with a 95% bootstrap CI over rows."""
    low, high = bootstrap_interval(len(rows), lambda idx: metric([rows[i] for i in idx]), n_resamples, seed)
    return {"value": metric(rows), "ci_low": low, "ci_high": high}


def paired_bootstrap(
    before: Rows, after: Rows, metric: Callable[[Rows], float], n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Metric before and after, their difference, and a 95% CI of the difference.

    Rows are paired by position (the same prompts), so each resample draws the same prompts for both.
    """
    if len(before) != len(after) or not before:
        raise ValueError("paired bootstrap needs two equally long, non-empty row lists")

    def delta(idx):
        return metric([after[i] for i in idx]) - metric([before[i] for i in idx])

    b, a = metric(before), metric(after)
    low, high = bootstrap_interval(len(before), delta, n_resamples, seed)
    return {"before": b, "after": a, "delta": a - b, "ci_low": low, "ci_high": high}
