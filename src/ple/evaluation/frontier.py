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
  in every replicate (the gate on the distinct prompts of the resample: a prompt drawn twice repeats its answer);
  the intervals are Bonferroni-corrected over every (baseline, budget) pair at family-wise level `alpha`;
- one line per baseline and budget: "PLE is ahead of X" (the interval above 0), "X is ahead of PLE" (below),
  "no difference detected", or "n/a (no admissible point)" when either side has none within the budget.
"""

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ple.errors import PLEError
from ple.evaluation.evaluate import judge_reward_name
from ple.evaluation.layout import COMPLETIONS, PROBE_JSON, cell_label
from ple.evaluation.metrics import SENTENCE_END, ngrams, sentences
from ple.evaluation.stats import standard_error, z_value
from ple.evaluation.verdict import frontier_claim, frontier_verdict
from ple.io import read_json_if_present, read_jsonl


@dataclass(frozen=True)
class Rules:
    budgets: tuple[float, ...]  # KL budgets, nats per answer
    min_distinct_ratio: float = 0.9  # admissible: distinct-2 >= this x the base model's
    max_top_sentence_share: float = 0.05  # admissible: at most this fraction of answers share their top sentence
    family_error: float = 0.05  # family-wise error level over every (baseline, budget) pair, Bonferroni
    resamples: int = 1000  # bootstrap replicates
    split_seed: int = 0  # the random split of the prompts into the selection halves
    bootstrap_seed: int = 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


OLD_RULE_NAMES = {"alpha": "family_error"}  # in compare files and frontier.json written before the rename


def rules_from(raw: Mapping[str, Any]) -> Rules:
    """Rules from a compare file's `frontier` mapping (or frontier.json's `rules`), checked."""
    names = {f.name for f in fields(Rules)}
    if isinstance(raw, Mapping):
        both = [old for old, new in OLD_RULE_NAMES.items() if old in raw and new in raw]
        if both:
            raise PLEError(f"compare: `frontier` gives {both[0]} and {OLD_RULE_NAMES[both[0]]}; keep the second")
        raw = {OLD_RULE_NAMES.get(k, k): v for k, v in raw.items()}
    if not isinstance(raw, Mapping) or "budgets" not in raw or set(raw) - names:
        raise PLEError(f"compare: `frontier` is a mapping with budgets (allowed keys: {', '.join(sorted(names))})")
    budgets = raw["budgets"]
    if not isinstance(budgets, list) or not budgets or not all(_is_number(b) and b > 0 for b in budgets):
        raise PLEError("compare: `frontier.budgets` must be a non-empty list of positive KL budgets (nats)")
    wrong = [k for k, v in raw.items() if k != "budgets" and not _is_number(v)]
    if wrong:
        raise PLEError(f"compare: `frontier.{wrong[0]}` must be a number, got {raw[wrong[0]]!r}")
    rules = Rules(**{**raw, "budgets": tuple(sorted(float(b) for b in budgets))})
    if not 0 < rules.family_error < 1 or rules.resamples < 100 or not 0 <= rules.max_top_sentence_share <= 1:
        raise PLEError(
            "compare: `frontier` needs 0 < family_error < 1, resamples >= 100, 0 <= max_top_sentence_share <= 1"
        )
    return rules


# ---------------------------------------------------------------------------------------------- points
@dataclass
class Point:
    """One policy's answers to the eval prompts: a checkpoint (method, learning rate, seed, step), or the base
    model's best-of-n (method BEST_OF_N, step n, its KL the bound log n - (n - 1)/n)."""

    method: str
    learning_rate: float | None
    seed: int | None
    step: int
    judge: np.ndarray  # per prompt; nan where the judge gave no score
    kl: np.ndarray  # per prompt, nats
    texts: list[str]
    features: "Features | None" = None

    @property
    def label(self) -> str:
        if self.method == BEST_OF_N:
            return f"best-of-{self.step}"
        return f"{cell_label(self.method, self.learning_rate, self.seed)}/step{self.step}"


BEST_OF_N = "best-of-n"


def best_of_n_kl_bound(n: int) -> float:
    """The KL of best-of-n sampling from its base policy is at most log n - (n - 1)/n (Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


class Features:
    """Each answer's word bigrams and sentences as integer ids, so that distinct-2 and the top-sentence share of
    any resample of the answers cost a concatenation and a count (the bootstrap redoes the gate thousands of
    times). The same definitions as ple.evaluation.metrics.distinct_n and top_sentence_share."""

    def __init__(self, texts: Sequence[str], vocabulary: dict):
        def ids(items) -> np.ndarray:
            return np.array([vocabulary.setdefault(x, len(vocabulary)) for x in items], dtype=np.int64)

        self.bigrams = [ids(("2", *g) for g in ngrams(t, 2)) for t in texts]
        self.sentences = [ids(("s", s) for s in sentences(t)) for t in texts]

    def distinct_2(self, idx: np.ndarray) -> float:
        grams = np.concatenate([self.bigrams[i] for i in idx])
        return len(np.unique(grams)) / len(grams) if len(grams) else 0.0

    def top_sentence_share(self, idx: np.ndarray) -> float:
        found = np.concatenate([self.sentences[i] for i in idx])
        return float(np.unique(found, return_counts=True)[1].max() / len(idx)) if len(found) and len(idx) else 0.0


# ---------------------------------------------------------------------------------------------- the envelope
@dataclass(frozen=True)
class Gated:
    """A point's judge score and mean KL on some prompts, and whether it passes the gate there."""

    judge: float
    kl: float
    admissible: bool


def gate(point: Point, idx: np.ndarray, base_distinct_2: float, rules: Rules) -> Gated:
    """The point on the prompts `idx` (a bootstrap resample repeats some): its judge score and KL over them, and
    the gate on the distinct prompts among them, since a prompt drawn twice repeats its answer, which is the
    resample repeating itself, not the policy (`base_distinct_2` is the base model's on the same distinct prompts)."""
    features, distinct = point.features, np.unique(idx)
    admissible = (
        features.distinct_2(distinct) >= rules.min_distinct_ratio * base_distinct_2
        and features.top_sentence_share(distinct) <= rules.max_top_sentence_share
    )
    judge = point.judge[idx]
    judge = float(np.nanmean(judge)) if np.isfinite(judge).any() else math.nan
    return Gated(judge, float(point.kl[idx].mean()), bool(admissible))


def choose(gated: Sequence[Gated], budget: float) -> int | None:
    """The index of the best admissible point within the KL budget (the first of equals), None if there is none."""
    best = None
    for i, g in enumerate(gated):
        if g.admissible and g.kl <= budget and not math.isnan(g.judge):
            if best is None or g.judge > gated[best].judge:
                best = i
    return best


def envelope(points: Sequence[Point], halves, base: Features, rules: Rules) -> dict[float, float]:
    """Budget -> the method's envelope: the point chosen on one half of the prompts, scored on the other, then
    the halves swapped; the mean of the two held-out scores (nan where either half has no admissible point)."""
    on = [[gate(p, half, base.distinct_2(np.unique(half)), rules) for p in points] for half in halves]
    out = {}
    for budget in rules.budgets:
        scores = []
        for chosen_on, scored_on in ((0, 1), (1, 0)):
            pick = choose(on[chosen_on], budget)
            scores.append(on[scored_on][pick].judge if pick is not None else math.nan)
        out[budget] = float(np.mean(scores)) if not any(math.isnan(s) for s in scores) else math.nan
    return out


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


# ---------------------------------------------------------------------------------------------- the comparison
def bootstrap_envelopes(
    by_method: Mapping[str, Sequence[Point]], base: Features, halves, rules: Rules
) -> dict[str, list[dict[float, float]]]:
    """Each method's envelopes on `rules.resamples` joint resamples: the same resampled prompts for every method
    (drawn within each half, so that the halves stay disjoint) and, for a method with several seeds, its seeds
    drawn with replacement; the gate, the selection and the envelope are redone on each."""
    rng = np.random.default_rng(rules.bootstrap_seed)
    out: dict[str, list[dict[float, float]]] = {m: [] for m in by_method}
    for _ in range(rules.resamples):
        drawn = tuple(h[rng.integers(0, len(h), len(h))] for h in halves)
        for method, points in by_method.items():
            seeds = sorted({p.seed for p in points if p.seed is not None})
            kept = points
            if len(seeds) > 1:
                chosen = set(rng.choice(seeds, len(seeds)).tolist())
                kept = [p for p in points if p.seed in chosen]
            out[method].append(envelope(kept, drawn, base, rules))
    return out


def compare(
    full: Mapping[str, dict[float, float]],
    replicates: Mapping[str, list[dict[float, float]]],
    reference: str,
    others: Sequence[str],
    rules: Rules,
) -> list[dict[str, Any]]:
    """reference minus each other method at each budget: the difference, its bootstrap standard error, and a
    Bonferroni-corrected normal interval (z at 1 - alpha / (2 m), m the number of (method, budget) pairs: with
    m near 30, a percentile interval would rest on the one or two most extreme of a thousand replicates)."""
    m = len(others) * len(rules.budgets)
    z = z_value(rules.family_error, m) if m else math.nan
    rows = []
    for other in others:
        for budget in rules.budgets:
            estimate = full[reference][budget] - full[other][budget]
            draws = np.array([r[budget] - o[budget] for r, o in zip(replicates[reference], replicates[other])])
            defined = draws[np.isfinite(draws)]
            se = standard_error(draws)
            low, high = estimate - z * se, estimate + z * se
            line = frontier_verdict(reference, other, low, high, full[reference][budget], full[other][budget])
            rows.append(
                {
                    "method": other,
                    "budget": budget,
                    "difference": estimate,
                    "se": se,
                    "ci_low": low,
                    "ci_high": high,
                    "z": z,
                    "comparisons": m,
                    "defined_share": len(defined) / len(draws) if len(draws) else 0.0,
                    "verdict": line,
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- the judge probe
def most_common_sentence(texts: Sequence[str]) -> tuple[str, float]:
    """The sentence the most answers contain (as first written, whitespace collapsed) and that share."""
    counts: Counter = Counter()
    written: dict[str, str] = {}
    for t in texts:
        for part in {" ".join(p.split()) for p in SENTENCE_END.split(t) if p.strip()}:
            key = part.lower()
            written.setdefault(key, part)
            counts[key] += 1
    if not counts:
        return "", 0.0
    key, n = counts.most_common(1)[0]
    return written[key], n / len(texts)


def probe_texts(base_texts: Sequence[str], sentence: str) -> list[str]:
    """The base model's answers with `sentence` appended: what the judge gives text that only adds the phrase."""
    return [f"{t.rstrip()} {sentence}".strip() for t in base_texts]


# ---------------------------------------------------------------------------------------------- the grid's points


def _rows(directory: Path) -> list[dict] | None:
    path = directory / COMPLETIONS
    return read_jsonl(path) if path.is_file() else None


def _point(method, rate, seed, step, rows: list[dict], judge_key: str, kl=None) -> Point:
    judge = np.array([math.nan if r.get(judge_key) is None else float(r[judge_key]) for r in rows])
    kls = np.array([float(r["kl"]) for r in rows]) if kl is None else np.full(len(rows), kl)
    return Point(method, rate, seed, step, judge, kls, [r["completion"] for r in rows])


def load_points(grid) -> tuple[Point | None, list[Point]]:
    """The base model's point, and every evaluated checkpoint and best-of-n as a point (the unfinished ones are
    left out). Best-of-n picks, for each prompt, the base model's draw with the highest training reward among its
    first n draws (the earliest among equals)."""
    judge_key = judge_reward_name(grid.base)
    base_rows = _rows(grid.base_dir)
    if base_rows is None:
        return None, []
    prompts = [r["prompt"] for r in base_rows]
    points = []
    for cell in grid.cells:
        for step in cell.steps:
            rows = _rows(cell.paths.eval(step))
            if rows is not None:
                if [r["prompt"] for r in rows] != prompts:
                    raise PLEError(f"{cell.paths.eval(step)} answers other prompts than the base model's evaluation")
                points.append(_point(cell.method, cell.learning_rate, cell.seed, step, rows, judge_key))
    draws = []
    for i in range(max(grid.best_of_n, default=0)):
        rows = _rows(grid.base_draw(i)[0])
        if rows is None:
            break
        draws.append(rows)
    for n in grid.best_of_n:
        if n > len(draws):
            continue
        picked = []
        for j in range(len(prompts)):
            rewards = [-math.inf if d[j].get("reward") is None else d[j]["reward"] for d in draws[:n]]
            picked.append(draws[int(np.argmax(rewards))][j])
        points.append(_point(BEST_OF_N, None, None, n, picked, judge_key, kl=best_of_n_kl_bound(n)))
    return _point("base", None, None, 0, base_rows, judge_key), points


# ---------------------------------------------------------------------------------------------- the report
def analyse(grid, rules: Rules) -> dict[str, Any] | None:
    """Everything the report shows, as one mapping (frontier.json); None before the base model is evaluated."""
    base, points = load_points(grid)
    if base is None:
        return None
    vocabulary: dict = {}
    for p in [base, *points]:
        p.features = Features(p.texts, vocabulary)
    everyone = np.arange(len(base.texts))
    base_d2 = base.features.distinct_2(everyone)
    halves = split_halves(len(base.texts), rules.split_seed)
    methods = [m for m in grid.methods if any(p.method == m for p in points)]
    by_method = {m: [p for p in points if p.method == m] for m in methods}
    if any(p.method == BEST_OF_N for p in points):
        by_method[BEST_OF_N] = [p for p in points if p.method == BEST_OF_N]
    full = {m: envelope(ps, halves, base.features, rules) for m, ps in by_method.items()}
    replicates = bootstrap_envelopes(by_method, base.features, halves, rules)
    z95 = z_value()
    envelopes = {}
    for m in by_method:
        envelopes[m] = {}
        for budget in rules.budgets:
            se = standard_error([r[budget] for r in replicates[m]])
            envelopes[m][budget] = {"value": full[m][budget], "se": se, "ci95": z95 * se}
    reference = grid.reference
    others = [m for m in methods if m != reference] if reference in methods else []
    rows = compare(full, replicates, reference, others, rules) if others else []
    point_rows = []
    for p in points:
        g = gate(p, everyone, base_d2, rules)
        point_rows.append(
            {
                "method": p.method,
                "learning_rate": p.learning_rate,
                "seed": p.seed,
                "step": p.step,
                "judge": g.judge,
                "kl": g.kl,
                "distinct_2": p.features.distinct_2(everyone),
                "top_sentence_share": p.features.top_sentence_share(everyone),
                "admissible": g.admissible,
            }
        )
    result = {
        "judge": judge_reward_name(grid.base),
        "rules": {f.name: getattr(rules, f.name) for f in fields(Rules)},
        "sampling": {k: getattr(grid.base, k) for k in ("temperature", "top_p", "top_k")},
        "n_prompts": len(base.texts),
        "halves": [len(h) for h in halves],
        "base": {"judge": float(np.nanmean(base.judge)), "distinct_2": base_d2},
        "points": point_rows,
        "envelopes": {m: {f"{b:g}": v for b, v in e.items()} for m, e in envelopes.items()},
        "reference": reference,
        "differences": rows,
        "claim": frontier_claim(rows, reference, rules) if rows else None,
        "probe": read_json_if_present(grid.output_dir / PROBE_JSON),
        "growth": growth(grid, point_rows),
    }
    return result


BRANCH_KEYS = ("frac_rank", "frac_wsft", "frac_skip", "wsft_weight_max_mean", "mean_gap")


def growth(grid, point_rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Per method and learning rate: KL, judge and distinct-2 at each evaluated step (mean over seeds), and, for
    the methods that log them, PLE's branch fractions and weights per iteration (metrics.jsonl, mean over seeds):
    what shows how a method's KL grows and why."""
    from ple.training.rundir import METRICS_JSONL

    out = []
    for method in grid.methods:
        for rate in grid.rates(method):
            mine = [p for p in point_rows if p["method"] == method and p["learning_rate"] == rate]
            if not mine:
                continue
            row: dict[str, Any] = {"method": method, "learning_rate": rate, "steps": {}}
            for step in sorted({p["step"] for p in mine}):
                at = [p for p in mine if p["step"] == step]
                row["steps"][step] = {
                    k: float(np.mean([p[k] for p in at])) for k in ("kl", "judge", "distinct_2", "top_sentence_share")
                }
            logs = []
            for seed in grid.method_seeds(method):
                path = grid.cell(method, rate, seed).paths.root / METRICS_JSONL
                logs += read_jsonl(path) if path.is_file() else []
            branches = {}
            for k in BRANCH_KEYS:
                per_iteration: dict[int, list[float]] = {}
                for r in logs:
                    if isinstance(r.get("iteration"), int) and r.get(k) is not None:
                        per_iteration.setdefault(r["iteration"], []).append(float(r[k]))
                if per_iteration:
                    branches[k] = [float(np.mean(per_iteration[t])) for t in sorted(per_iteration)]
            row["branches"] = branches
            out.append(row)
    return out


def probe(grid, judge) -> dict[str, Any] | None:
    """The judge probe (probe.json): the judge's mean score of the base model's answers with the highest-scoring
    checkpoint's most common sentence appended. `judge` is the held-out reward function (prompts, completions)
    -> scores."""
    from ple.rewards import score

    base, points = load_points(grid)
    checkpoints = [p for p in points if p.method != BEST_OF_N]
    if base is None or not checkpoints:
        return None
    top = max(checkpoints, key=lambda p: np.nanmean(p.judge))
    sentence, share = most_common_sentence(top.texts)
    prompts = [r["prompt"] for r in _rows(grid.base_dir)]
    scores = [s for s in score(judge, prompts, probe_texts(base.texts, sentence)) if s is not None]
    return {
        "source": top.label,
        "source_judge": float(np.nanmean(top.judge)),
        "sentence": sentence,
        "sentence_share": share,
        "base_judge": float(np.nanmean(base.judge)),
        "probe_judge": float(np.mean(scores)) if scores else math.nan,
        "n": len(scores),
    }
