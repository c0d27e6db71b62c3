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
from statistics import NormalDist
from typing import Any

import numpy as np

from ple.errors import PLEError
from ple.evaluation.evaluate import COMPLETIONS, judge_reward_name, reward_label
from ple.evaluation.metrics import _SENTENCE_END, _ngrams, sentences
from ple.evaluation.verdict import display
from ple.io import atomic_write_text, read_json_if_present, read_jsonl, strict_json


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
        return f"{self.method}/lr_{self.learning_rate:g}/seed{self.seed}/step{self.step}"


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

        self.bigrams = [ids(("2", *g) for g in _ngrams(t, 2)) for t in texts]
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
    z = NormalDist().inv_cdf(1 - rules.alpha / (2 * m)) if m else math.nan
    rows = []
    for other in others:
        for budget in rules.budgets:
            estimate = full[reference][budget] - full[other][budget]
            draws = np.array([r[budget] - o[budget] for r, o in zip(replicates[reference], replicates[other])])
            defined = draws[np.isfinite(draws)]
            se = float(defined.std(ddof=1)) if len(defined) > 1 else math.nan
            low, high = estimate - z * se, estimate + z * se
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
                    "verdict": verdict_line(reference, other, estimate, low, high, full, budget),
                }
            )
    return rows


def verdict_line(reference: str, other: str, estimate, low, high, full, budget: float) -> str:
    ref, oth = display(reference), display(other)
    if math.isnan(full[reference][budget]) or math.isnan(full[other][budget]):
        missing = [display(m) for m in (reference, other) if math.isnan(full[m][budget])]
        return f"n/a (no admissible point: {' and '.join(missing)})"
    if math.isnan(low) or math.isnan(high):
        return "n/a (no interval: too few defined resamples)"
    if low > 0:
        return f"{ref} is ahead of {oth}"
    if high < 0:
        return f"{oth} is ahead of {ref}"
    return "no difference detected"


def claim_sentence(rows: Sequence[dict], reference: str, rules: Rules) -> str:
    """One sentence from the verdict lines, whichever way they go."""
    ref = display(reference)
    parts = []
    for budget in rules.budgets:
        mine = [r for r in rows if r["budget"] == budget]
        ahead = [display(r["method"]) for r in mine if r["verdict"] == f"{ref} is ahead of {display(r['method'])}"]
        behind = [display(r["method"]) for r in mine if r["verdict"] == f"{display(r['method'])} is ahead of {ref}"]
        na = [display(r["method"]) for r in mine if r["verdict"].startswith("n/a")]
        same = [display(r["method"]) for r in mine if r["verdict"] == "no difference detected"]
        if na and len(na) == len(mine):
            parts.append(f"at KL <= {budget:g} nats nothing can be compared ({_names(na)} n/a)")
            continue
        bits = []
        if ahead:
            bits.append(f"ahead of {_names(ahead)}")
        if behind:
            bits.append(f"behind {_names(behind)}")
        if same:
            bits.append(f"not detectably different from {_names(same)}")
        if na:
            bits.append(f"n/a against {_names(na)}")
        parts.append(f"at KL <= {budget:g} nats {ref} is " + "; ".join(bits))
    gate_text = (
        f"distinct-2 at least {rules.min_distinct_ratio:g} x the base model's and a top-sentence share at most "
        f"{rules.max_top_sentence_share:.0%}"
    )
    return (
        f"On the held-out judge, at matched KL to the base model with diversity gated ({gate_text}), "
        f"{'; '.join(parts)} (Bonferroni-corrected {1 - rules.alpha:.0%} intervals over {len(rows)} comparisons)."
    )


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# ---------------------------------------------------------------------------------------------- the judge probe
def most_common_sentence(texts: Sequence[str]) -> tuple[str, float]:
    """The sentence the most answers contain (as first written, whitespace collapsed) and that share."""
    counts: Counter = Counter()
    written: dict[str, str] = {}
    for t in texts:
        for part in {" ".join(p.split()) for p in _SENTENCE_END.split(t) if p.strip()}:
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
PROBE_JSON = "probe.json"


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
    z95 = NormalDist().inv_cdf(0.975)
    envelopes = {}
    for m in by_method:
        envelopes[m] = {}
        for budget in rules.budgets:
            values = np.array([r[budget] for r in replicates[m]])
            values = values[np.isfinite(values)]
            se = float(values.std(ddof=1)) if len(values) > 1 else math.nan
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
        "n_prompts": len(base.texts),
        "halves": [len(h) for h in halves],
        "base": {"judge": float(np.nanmean(base.judge)), "distinct_2": base_d2},
        "points": point_rows,
        "envelopes": {m: {f"{b:g}": v for b, v in e.items()} for m, e in envelopes.items()},
        "reference": reference,
        "differences": rows,
        "claim": claim_sentence(rows, reference, rules) if rows else None,
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


def run_probe(grid, judge) -> None:
    """probe.json: the judge's mean score of the base model's answers with the highest-scoring checkpoint's most
    common sentence appended. `judge` is the held-out reward function (prompts, completions) -> scores."""
    from ple.rewards import score

    base, points = load_points(grid)
    checkpoints = [p for p in points if p.method != BEST_OF_N]
    if base is None or not checkpoints:
        return
    top = max(checkpoints, key=lambda p: np.nanmean(p.judge))
    sentence, share = most_common_sentence(top.texts)
    prompts = [r["prompt"] for r in _rows(grid.base_dir)]
    scores = [s for s in score(judge, prompts, probe_texts(base.texts, sentence)) if s is not None]
    record = {
        "source": top.label,
        "source_judge": float(np.nanmean(top.judge)),
        "sentence": sentence,
        "sentence_share": share,
        "base_judge": float(np.nanmean(base.judge)),
        "probe_judge": float(np.mean(scores)) if scores else math.nan,
        "n": len(scores),
    }
    atomic_write_text(grid.output_dir / PROBE_JSON, strict_json(record, indent=2))


def write_frontier(grid) -> Path | None:
    """frontier.md with its plots, frontier.json and frontier_points.csv in the grid's directory."""
    if grid.frontier is None:
        return None
    rules = rules_from(grid.frontier)
    result = analyse(grid, rules)
    if result is None:
        return None
    out = grid.output_dir
    atomic_write_text(out / "frontier.json", strict_json(result, indent=2))
    _write_points_csv(result["points"], out / "frontier_points.csv")
    plot_frontier(result, rules, out / "frontier.png")
    plot_diversity(result, rules, out / "frontier_diversity.png")
    if result["differences"]:
        plot_forest(result, rules, out / "frontier_forest.png")
    path = out / "frontier.md"
    atomic_write_text(path, frontier_markdown(result, rules, grid))
    return path


def _write_points_csv(rows: list[dict], path: Path) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["method"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def frontier_markdown(result: dict, rules: Rules, grid) -> str:
    budgets = rules.budgets
    judge = reward_label(result["judge"])
    base = result["base"]
    points = result["points"]
    n_checkpoints = sum(p["method"] != BEST_OF_N for p in points)
    lines = [
        "# The reward-KL frontier",
        "",
        f"{n_checkpoints} checkpoint evaluations on {result['n_prompts']} held-out prompts, answers drawn at "
        f"temperature {grid.base.temperature:g}, top_p {grid.base.top_p:g}, top_k {grid.base.top_k}; the score is "
        f"the {judge}; KL is KL(pi || pi_base) in nats per answer (ple.evaluation.metrics.answer_kl). "
        f"Base model: judge {_fmt(base['judge'])}, distinct-2 {_fmt(base['distinct_2'])}.",
        "",
        f"Rules (fixed before the run): a point is admissible when its distinct-2 is at least "
        f"{rules.min_distinct_ratio:g} x the base model's and its top-sentence share at most "
        f"{rules.max_top_sentence_share:.0%}; a method's envelope at budget k is its best admissible judge score "
        f"with KL <= k over all its seeds and learning rates, chosen on one half of the prompts "
        f"({result['halves'][0]} / {result['halves'][1]}) and scored on the other, then swapped; "
        f"{rules.resamples} joint paired bootstrap replicates (prompts within each half, seeds within a method) "
        "redo the gate, the selection and the difference.",
        "",
        *_gate_warning(rules, min(result["halves"])),
        "## Verdict",
        "",
        result["claim"] or "No comparison: the reference method has no evaluated point yet.",
        "",
        "| vs | " + " | ".join(f"KL <= {b:g}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    by_method: dict[str, dict[float, dict]] = {}
    for row in result["differences"]:
        by_method.setdefault(row["method"], {})[row["budget"]] = row
    for method, rows in by_method.items():
        cells = []
        for b in budgets:
            r = rows[b]
            interval = f"{_fmt(r['difference'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
            if r["defined_share"] < 1:  # resamples where a side had no admissible point within the budget
                interval += f" (defined in {r['defined_share']:.0%} of resamples)"
            cells.append(f"{r['verdict']}: {interval}" if not r["verdict"].startswith("n/a") else r["verdict"])
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if result["differences"]:
        first = result["differences"][0]
        lines += [
            "",
            f"{display(grid.reference)} minus each method; intervals are the estimate ± {first['z']:.2f} bootstrap "
            f"standard errors (Bonferroni over {first['comparisons']} comparisons, family-wise "
            f"{1 - rules.alpha:.0%}).",
        ]
    lines += [
        "",
        "![judge score against KL](frontier.png)",
        "",
        "## Envelopes",
        "",
        "Split-half envelope ± 1.96 bootstrap standard errors (per method, uncorrected); - where the method has no "
        "admissible point within the budget.",
        "",
        "| method | " + " | ".join(f"KL <= {b:g}" for b in budgets) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for method, envelope_row in result["envelopes"].items():
        cells = []
        for b in budgets:
            e = envelope_row[f"{b:g}"]
            cells.append("-" if math.isnan(e["value"]) else f"{e['value']:.3f} ± {_fmt(e['ci95'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    best = [p for p in points if p["method"] == BEST_OF_N]
    if best:
        lines += [
            "",
            "## The base model's best-of-n (by the training reward)",
            "",
            "| n | KL bound | judge | distinct-2 | top-sentence share | admissible |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for p in best:
            lines.append(
                f"| {p['step']} | {p['kl']:.3f} | {_fmt(p['judge'])} | {_fmt(p['distinct_2'])} | "
                f"{_fmt(p['top_sentence_share'])} | {'yes' if p['admissible'] else 'no'} |"
            )
    probe = result.get("probe")
    if probe:
        top = max(
            (e["value"] for row in result["envelopes"].values() for e in row.values() if not math.isnan(e["value"])),
            default=math.nan,
        )
        reaches = not math.isnan(top) and probe["probe_judge"] >= top
        lines += [
            "",
            "## A probe of the judge",
            "",
            f"The highest-scoring checkpoint ({probe['source']}, judge {_fmt(probe['source_judge'])}) most often "
            f'says "{probe["sentence"]}" ({probe["sentence_share"]:.0%} of its answers). The base model\'s answers '
            f"score {_fmt(probe['base_judge'])}; with that sentence appended they score "
            f"{_fmt(probe['probe_judge'])} (n = {probe['n']}). The top of the frontier (the highest envelope) is "
            f"{_fmt(top)}: "
            + (
                "**the appended sentence alone reaches it**, so the judge can be bought with one phrase."
                if reaches
                else "the appended sentence alone does not reach it."
            ),
        ]
    lines += [
        "",
        "## Every point",
        "",
        "![judge score against distinct-2](frontier_diversity.png)",
        "",
        "| method | lr | seed | step | KL | judge | distinct-2 | top-sentence share | admissible |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in points:
        if p["method"] == BEST_OF_N:
            continue
        lines.append(
            f"| {p['method']} | {p['learning_rate']:g} | {p['seed']} | {p['step']} | {_fmt(p['kl'])} | "
            f"{_fmt(p['judge'])} | {_fmt(p['distinct_2'])} | {_fmt(p['top_sentence_share'])} | "
            f"{'yes' if p['admissible'] else 'no'} |"
        )
    if result["differences"]:
        lines += ["", "![PLE minus each method at each budget](frontier_forest.png)"]
    lines += growth_markdown(result["growth"])
    lines += ["", "Every number: `frontier.json`; every point: `frontier_points.csv`.", ""]
    return "\n".join(lines)


def growth_markdown(rows: Sequence[dict]) -> list[str]:
    if not rows:
        return []
    steps = sorted({int(s) for r in rows for s in r["steps"]})
    lines = [
        "",
        "## How KL and diversity grow along training",
        "",
        "Mean over seeds at each evaluated step: KL / judge / distinct-2.",
        "",
        "| method | lr | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---:|" + "---|" * len(steps),
    ]
    for r in rows:
        cells = []
        for s in steps:
            v = r["steps"].get(s) or r["steps"].get(str(s))
            cells.append(f"{v['kl']:.2f} / {v['judge']:.3f} / {v['distinct_2']:.3f}" if v else "-")
        lines.append(f"| {r['method']} | {r['learning_rate']:g} | " + " | ".join(cells) + " |")
    logged = [r for r in rows if r["branches"].get("frac_rank")]
    if logged:
        lines += [
            "",
            "PLE's branches per iteration (metrics.jsonl, mean over seeds): the share of queries on the ranking "
            "branch / on the weighted-SFT branch, and the mean largest weighted-SFT weight.",
            "",
            "| method | lr | frac_rank | frac_wsft | max wsft weight |",
            "|---|---:|---|---|---|",
        ]
        for r in logged:
            b = r["branches"]
            shown = [" ".join(f"{x:.2f}" for x in b.get(k, [])) or "-" for k in BRANCH_KEYS[:2]]
            shown.append(" ".join(f"{x:.2f}" for x in b.get("wsft_weight_max_mean", [])) or "-")
            lines.append(f"| {r['method']} | {r['learning_rate']:g} | " + " | ".join(shown) + " |")
    return lines


def _gate_warning(rules: Rules, half: int) -> list[str]:
    """A top-sentence share below one answer in a half cannot be met: say so rather than report n/a everywhere."""
    if half and rules.max_top_sentence_share < 1 / half:
        return [
            f"**Warning**: with {half} prompts in a half, a top-sentence share of at most "
            f"{rules.max_top_sentence_share:.0%} is less than one answer, so no point can pass the gate; use more "
            "prompts or a larger max_top_sentence_share.",
            "",
        ]
    return []


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(methods: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def plot_frontier(result: dict, rules: Rules, path: Path) -> None:
    """Judge score against KL on a square-root axis (as Gao et al. 2022): every checkpoint a dot, hollow when not
    admissible; each method's envelope on all prompts as a step line, its split-half envelope at each budget with
    its interval; best-of-n dashed; the budgets dotted."""
    plt = _pyplot()
    points = result["points"]
    methods = list(dict.fromkeys(p["method"] for p in points if p["method"] != BEST_OF_N))
    colours = _colours(methods)
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.set_xscale("function", functions=(lambda x: np.sqrt(np.clip(x, 0, None)), np.square))
    widest = max([rules.budgets[-1], *(p["kl"] for p in points)])
    for i, method in enumerate(methods):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["kl"])
        c = colours[method]
        for admissible in (True, False):
            chosen = [p for p in mine if p["admissible"] == admissible]
            if chosen:
                ax.scatter(
                    [max(p["kl"], 0) for p in chosen],
                    [p["judge"] for p in chosen],
                    s=22,
                    facecolors=c if admissible else "none",
                    edgecolors=c,
                    label=method if admissible or not any(p["admissible"] for p in mine) else None,
                )
        xs, ys, best = [], [], -math.inf
        for p in mine:
            if p["admissible"] and p["judge"] > best:
                best = p["judge"]
                xs.append(max(p["kl"], 0))
                ys.append(best)
        if xs:
            ax.step(xs + [max(rules.budgets[-1], xs[-1])], ys + [ys[-1]], where="post", color=c, lw=1, alpha=0.7)
        dodge = 0.012 * math.sqrt(widest) * (i - (len(methods) - 1) / 2)  # side by side at each budget
        for b in rules.budgets:
            e = result["envelopes"][method][f"{b:g}"]
            if not math.isnan(e["value"]):
                x = max(math.sqrt(b) + dodge, 0) ** 2
                ax.errorbar([x], [e["value"]], yerr=[[e["ci95"]], [e["ci95"]]], color=c, capsize=3, fmt="_", ms=10)
    best = sorted((p for p in points if p["method"] == BEST_OF_N), key=lambda p: p["step"])
    if best:
        ax.plot([p["kl"] for p in best], [p["judge"] for p in best], "k--", lw=1.2, label="base best-of-n (bound)")
        for p in best:
            ax.annotate(f"n={p['step']}", (p["kl"], p["judge"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    for b in rules.budgets:
        ax.axvline(b, color="grey", ls=":", lw=1)
    ax.axhline(result["base"]["judge"], color="grey", lw=0.8)
    ax.set_xlim(0, widest * 1.05)
    ticks: list[float] = []
    for t in sorted({*rules.budgets, 0, 0.25, 1, 2, 4, 8, 16, 32, 64, 128}):
        if t <= widest * 1.05 and (not ticks or math.sqrt(t) - math.sqrt(ticks[-1]) >= 0.04 * math.sqrt(widest)):
            ticks.append(t)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("KL(pi || pi_base), nats per answer (square-root scale; dotted: the budgets)")
    ax.set_ylabel(reward_label(result["judge"]))
    ax.set_title("Judge score against KL to the base model (hollow: fails the diversity gate)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_diversity(result: dict, rules: Rules, path: Path) -> None:
    plt = _pyplot()
    points = [p for p in result["points"] if p["method"] != BEST_OF_N]
    methods = list(dict.fromkeys(p["method"] for p in points))
    colours = _colours(methods)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method in methods:
        mine = [p for p in points if p["method"] == method]
        ax.scatter(
            [p["distinct_2"] for p in mine],
            [p["judge"] for p in mine],
            s=22,
            facecolors=[colours[method] if p["admissible"] else "none" for p in mine],
            edgecolors=colours[method],
            label=method,
        )
    ax.axvline(rules.min_distinct_ratio * result["base"]["distinct_2"], color="grey", ls=":", lw=1)
    ax.scatter([result["base"]["distinct_2"]], [result["base"]["judge"]], marker="*", s=120, c="k", label="base")
    ax.set_xlabel("distinct-2 (dotted: the gate)")
    ax.set_ylabel(reward_label(result["judge"]))
    ax.set_title("Judge score against diversity (hollow: fails the gate)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_forest(result: dict, rules: Rules, path: Path) -> None:
    plt = _pyplot()
    rows = result["differences"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(rules.budgets), figsize=(4 * len(rules.budgets), 0.4 * len(methods) + 1.5))
    axes = np.atleast_1d(axes)
    for ax, budget in zip(axes, rules.budgets):
        for i, method in enumerate(methods):
            r = next(x for x in rows if x["method"] == method and x["budget"] == budget)
            if math.isnan(r["difference"]) or math.isnan(r["ci_low"]):
                ax.text(0, i, "n/a", ha="center", va="center", fontsize=7)
                continue
            spread = [[r["difference"] - r["ci_low"]], [r["ci_high"] - r["difference"]]]
            ax.errorbar([r["difference"]], [i], xerr=spread, fmt="o", color="k", capsize=3, ms=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(methods)), methods if ax is axes[0] else [""] * len(methods))
        ax.invert_yaxis()
        ax.set_title(f"KL <= {budget:g} nats", fontsize=9)
        ax.set_xlabel("difference in judge score")
    fig.suptitle(f"{display(result['reference'])} minus each method, Bonferroni-corrected intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
