"""Every interval ple reports, in one place: the bootstrap intervals of a metric and of a before/after change (over
prompts), the two-level bootstrap of a difference between methods (over seeds, then prompts), normal intervals
from a bootstrap standard error with a Bonferroni correction, and the smallest difference a grid can detect."""

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

Rows = Sequence[dict[str, Any]]


def z_value(error: float = 0.05, comparisons: int = 1) -> float:
    """The two-sided normal quantile for family-wise error level `error` over `comparisons` intervals
    (Bonferroni): z = Phi^-1(1 - error / (2 m)); 1.960 for error 0.05 and one comparison."""
    return NormalDist().inv_cdf(1 - error / (2 * comparisons))


def standard_error(draws: Sequence[float]) -> float:
    """The standard deviation (ddof 1) of the finite bootstrap draws: a replicate where the statistic is undefined
    (nan) is left out; nan with fewer than two."""
    finite = np.asarray(draws, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(finite.std(ddof=1)) if len(finite) > 1 else math.nan


def bootstrap_interval(n: int, statistic: Callable[[np.ndarray], float], n_resamples: int, seed: int):
    """A 95% bootstrap interval of `statistic(indices)` over n rows resampled with replacement: the resamples
    (drawn by scipy.stats.bootstrap) give the spread, 2.5-97.5% around their median, placed on the full-sample
    value.

    Corpus-level metrics (distinct-n, perplexity) are biased on resamples that repeat rows: a repeated completion
    repeats its n-grams, so distinct-n falls on nearly every resample. The resamples are therefore trusted for the
    spread but not for the centre. (BCa, scipy's default, corrects the bias from the share of resamples below the
    estimate; for distinct-n that share is near 0 or 1, where its interval collapses and can miss the estimate.)"""
    from scipy.stats import bootstrap

    if n < 2:  # one row has no spread to resample
        return math.nan, math.nan
    value = statistic(np.arange(n))
    result = bootstrap(
        (np.arange(n),),
        statistic,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, mid, high = np.percentile(result.bootstrap_distribution, [2.5, 50, 97.5])
    return float(value + (low - mid)), float(value + (high - mid))


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


def hierarchical_difference(
    a: dict[int, np.ndarray], b: dict[int, np.ndarray], n_resamples: int = 4000, seed: int = 0
) -> dict[str, float]:
    """Mean score of A minus mean score of B, with a 95% percentile interval from a two-level bootstrap.

    `a` and `b` map a seed to that cell's per-prompt scores on the same prompts, in the same order. Only the seeds
    both hold are used, paired: seed s of A against seed s of B (the same query order and evaluation seed). Each
    resample draws the seeds with replacement and then, within each drawn seed, the prompts with replacement, so
    the interval carries both the run-to-run and the prompt-to-prompt variation. `se` is the resamples' standard
    deviation."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two methods share no seed")
    diffs = np.stack([np.asarray(a[s], dtype=float) - np.asarray(b[s], dtype=float) for s in seeds])  # seeds x prompts
    n_seeds, n_prompts = diffs.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, (n_resamples, n_seeds))
    prompt_draws = rng.integers(0, n_prompts, (n_resamples, n_seeds, n_prompts))
    resampled = np.nanmean(diffs[seed_draws[:, :, None], prompt_draws], axis=(1, 2))  # nan: a prompt left unscored
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "delta": float(np.nanmean(diffs)),
        "ci_low": float(low),
        "ci_high": float(high),
        "se": float(resampled.std(ddof=1)),
        "seeds": n_seeds,
        "prompts": n_prompts,
    }


def detectable_difference(se: float, error: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at error level `error` finds with probability `power`, given
    the standard error of the difference: (z_{1 - error/2} + z_{power}) * se, (1.960 + 0.842) * se by default."""
    return (z_value(error) + NormalDist().inv_cdf(power)) * se if math.isfinite(se) else math.nan
