"""The reward-KL frontier: every checkpoint of every method as a point (KL to the base model, held-out judge
score), methods compared at matched KL with diversity gated, and the verdict written from intervals.

The rules (`Rules`) are fixed in the compare file before the run they judge:

- a point is one checkpoint's evaluation (a cell at one step). It is admissible when its distinct-2 is at least
  `min_distinct_ratio` x the base model's (same prompts, same sampling) and its top-sentence share is at most
  `max_top_sentence_share`; the others are drawn hollow and enter no verdict;
- a method's envelope at KL budget k is its best judge score among its admissible points whose mean KL is at most
  k, all its seeds and learning rates pooled. Against the winner's curse the point is chosen on one half of the
  prompts and scored on the other, then the halves swap, and the envelope is the mean of the two held-out scores
  (the halves are a fixed random split, `split_seed`);
- PLE minus X at each budget, with a paired bootstrap that resamples prompts jointly for every method (within each
  half, so the halves stay disjoint) and each method's seeds, redoing the gate, the selection and the difference
  in every replicate; the intervals are Bonferroni-corrected over every (baseline, budget) pair at family-wise
  level `alpha`;
- one line per baseline and budget: "PLE is ahead of X" (the interval above 0), "X is ahead of PLE" (below),
  "no difference detected", or "n/a (no admissible point)" when either side has none within the budget.
"""

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ple.errors import PLEError


@dataclass(frozen=True)
class Rules:
    budgets: tuple[float, ...]  # KL budgets, nats per answer
    min_distinct_ratio: float = 0.9  # admissible: distinct-2 >= this x the base model's
    max_top_sentence_share: float = 0.05  # admissible: at most this fraction of answers share their top sentence
    alpha: float = 0.05  # family-wise error over every (baseline, budget) pair, Bonferroni
    resamples: int = 1000  # bootstrap replicates
    split_seed: int = 0  # the random split of the prompts into the selection halves
    bootstrap_seed: int = 0


def rules_from(raw: Mapping[str, Any]) -> Rules:
    """Rules from a compare file's `frontier` mapping, checked."""
    names = {f.name for f in fields(Rules)}
    if not isinstance(raw, Mapping) or "budgets" not in raw or set(raw) - names:
        raise PLEError(f"compare: `frontier` is a mapping with budgets (allowed keys: {', '.join(sorted(names))})")
    budgets = raw["budgets"]
    if not isinstance(budgets, list) or not budgets or not all(isinstance(b, (int, float)) and b > 0 for b in budgets):
        raise PLEError("compare: `frontier.budgets` must be a non-empty list of positive KL budgets (nats)")
    rules = Rules(**{**raw, "budgets": tuple(sorted(float(b) for b in budgets))})
    if not 0 < rules.alpha < 1 or rules.resamples < 100 or not 0 <= rules.max_top_sentence_share <= 1:
        raise PLEError("compare: `frontier` needs 0 < alpha < 1, resamples >= 100, 0 <= max_top_sentence_share <= 1")
    return rules
