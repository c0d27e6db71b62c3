"""The results of a comparison grid (ple.evaluation.grid) as one mapping, results.json: every finished cell's
values, their means and stds over seeds, the reference method's difference from each other method with its
interval and pairwise record, PLE's logs per iteration, and which methods joined the grid later. The views
(ple.evaluation.results_views) render results.md, the CSVs and the plots from it and compute nothing."""

import math
import platform
import statistics
from typing import Any

import numpy as np

from ple.evaluation.evaluate import HELDOUT, judge_reward_name, reward_label
from ple.evaluation.layout import COMPARE_JSON, COMPARE_ROWS, COMPLETIONS, EVAL_JSON, INVOCATIONS
from ple.evaluation.metrics import METRICS
from ple.evaluation.stats import detectable_difference, hierarchical_difference
from ple.io import read_json, read_json_if_present, read_jsonl
from ple.training.rundir import METRICS_JSONL

BUDGET_COLUMNS = {  # budget.json key -> (column, label)
    "samples": ("samples", "samples"),
    "reward_calls": ("reward_calls", "reward calls"),
    "gen_tokens": ("gen_tokens", "tokens generated"),
    "seconds": ("minutes", "train minutes"),
}
KEYS = ("method", "learning_rate", "seed", "step")  # what names one evaluation in the long table


def cell_values(grid, cell) -> dict[str, float | None] | None:
    """Every value of a finished cell's final evaluation: each metric of eval.json, the budget, and the pairwise
    rates against the base model and the baseline; None for an unfinished cell."""
    result = read_json_if_present(cell.paths.eval(cell.final_step) / EVAL_JSON)
    budget = read_json_if_present(cell.paths.budget)
    if result is None or budget is None:
        return None
    values = {name: m["value"] for name, m in result["metrics"].items()}
    for key, (column, _) in BUDGET_COLUMNS.items():
        values[column] = budget.get(key) / (60 if key == "seconds" else 1) if budget.get(key) is not None else None
    for other in ("base", grid.baseline) if grid.baseline else ("base",):
        compare = read_json_if_present(cell.paths.vs(other) / COMPARE_JSON)
        for outcome in ("win", "tie", "loss"):
            if other == "base" or outcome == "win":
                values[f"{outcome}_vs_{other}"] = compare["rates"][outcome]["value"] if compare else None
    return values


def long_table(grid) -> tuple[dict | None, list[dict[str, Any]]]:
    """The base model's eval.json, and one row (method, learning_rate, seed, step, metric, value) per value of
    every finished cell: the table every other view (results.md, the CSVs, the plots, the verdicts) is read from.
    The per-prompt scores stay beside it, in each evaluation's completions.jsonl."""
    rows = []
    for cell in grid.cells:
        values = cell_values(grid, cell)
        for metric, value in (values or {}).items():
            rows.append(
                dict(zip(KEYS, (cell.method, cell.learning_rate, cell.seed, cell.final_step)))
                | {
                    "metric": metric,
                    "value": value,
                }
            )
    return read_json_if_present(grid.base_dir / EVAL_JSON), rows


def wide(rows: list[dict]) -> list[dict[str, Any]]:
    """One row per evaluation, one column per metric (cells.csv)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in KEYS), dict(zip(KEYS, (r[k] for k in KEYS))))[r["metric"]] = r["value"]
    return list(out.values())


def summarise(rows: list[dict], methods) -> list[dict]:
    """Mean and std over seeds of every metric, per method and learning rate."""
    out = []
    cells = wide(rows)
    for method in methods:
        for rate in sorted({c["learning_rate"] for c in cells if c["method"] == method}):
            mine = [c for c in cells if c["method"] == method and c["learning_rate"] == rate]
            summary: dict[str, Any] = {"method": method, "learning_rate": rate, "seeds": len(mine)}
            for key in dict.fromkeys(k for c in mine for k in c if k not in KEYS):
                values = [c[key] for c in mine if c.get(key) is not None and not math.isnan(c[key])]
                summary[f"{key}_mean"] = statistics.fmean(values) if values else None
                summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            out.append(summary)
    return out


def table_columns(grid, base: dict | None) -> dict[str, str]:
    """The compare table's columns, key -> label: the rewards, the pairwise rates, the registered metrics marked
    in_summary, the budget."""
    rewards = [k for k in (base or {}).get("metrics", {}) if k == "reward" or k.startswith(HELDOUT)]
    columns = {k: reward_label(k) for k in rewards}
    columns |= {"win_vs_base": "win vs base", "loss_vs_base": "loss vs base"}
    if grid.baseline:
        columns[f"win_vs_{grid.baseline}"] = f"win vs {grid.baseline}"
    columns |= {m.name: m.label for m in METRICS.values() if m.in_summary}
    return columns | {"samples": "samples", "minutes": "train minutes"}


def final_cells(grid, method: str) -> list:
    return [c for c in grid.cells if c.method == method and (c.paths.eval(c.final_step) / COMPLETIONS).is_file()]


def scores_by_seed(grid, method: str, key: str) -> dict[int, np.ndarray]:
    """seed -> the held-out score of each eval prompt, for the finished cells of `method` (at its one rate)."""
    return {
        c.seed: np.array(
            [
                np.nan if r.get(key) is None else float(r[key])
                for r in read_jsonl(c.paths.eval(c.final_step) / COMPLETIONS)
            ]
        )
        for c in final_cells(grid, method)
    }


def pairwise_record(grid, method: str) -> dict[str, float] | None:
    """The reference method's win / tie / loss rates against `method`, judged in both orders, pooled over their
    shared seeds."""
    outcomes = []
    for cell in grid.cells:
        path = cell.paths.vs(grid.reference) / COMPARE_ROWS
        if cell.method == method and path.is_file():
            outcomes += [r["outcome"] for r in read_jsonl(path)]  # A is the reference
    if not outcomes:
        return None
    return {k: sum(o == k for o in outcomes) / len(outcomes) for k in ("win", "tie", "loss")}


def differences(grid) -> dict[str, dict[str, Any]]:
    """The reference (PLE) minus every other method in held-out score (ple.evaluation.verdict), with its pairwise
    record; for methods at one learning rate (a grid of several rates is compared on its frontier)."""
    key = judge_reward_name(grid.base)
    if len(grid.rates(grid.reference)) != 1:
        return {}
    ref = scores_by_seed(grid, grid.reference, key)
    out = {}
    for method in grid.methods:
        if method == grid.reference or len(grid.rates(method)) != 1:
            continue
        other = scores_by_seed(grid, method, key)
        if ref and set(ref) & set(other):
            out[method] = {**hierarchical_difference(ref, other), "pairwise": pairwise_record(grid, method)}
    return out


def analyse_results(grid) -> dict[str, Any]:
    """Everything results.md shows, as one mapping (results.json)."""
    base, rows = long_table(grid)
    finished = {(r["method"], r["learning_rate"], r["seed"]) for r in rows}
    diffs = differences(grid)
    for d in diffs.values():
        d["detectable"] = detectable_difference(d["se"])
    records = sorted((grid.output_dir / INVOCATIONS).glob("*.json"))
    return {
        "base": base,
        "rows": rows,
        "summary": summarise(rows, grid.methods),
        "columns": table_columns(grid, base),
        "seeds": len(grid.seeds),
        "seeds_per_method": {m: len(s) for m, s in grid.seeds_per_method.items() if len(s) != len(grid.seeds)},
        "judge": judge_reward_name(grid.base),
        "tie_margin": grid.tie_margin,
        "reference": grid.reference,
        "missing": [c.label for c in grid.cells if c.key not in finished],
        "machine": f"{platform.machine()}, {_threads()} torch threads",
        "differences": diffs,
        "detectable_median": statistics.median(d["detectable"] for d in diffs.values()) if diffs else None,
        "ple_branches": branches_per_iteration(ple_runs(grid)),
        "added_later": added_later(grid),
        "first_invocation": _day(records[0].name) if records else None,
        "frontier": grid.frontier is not None,  # whether frontier.json beside it is this grid's
    }


FIGURE3_KEYS = ("tau", "mean_s", "mean_s_p", "frac_rank", "frac_wsft", "n_rank_plain_wins", "wsft_weight_max_mean")


def ple_runs(grid) -> list[list[dict[str, Any]]]:
    """PLE's metrics.jsonl rows (the keys of the paper's Figure 3), one list per finished seed."""
    cells = [c for c in grid.cells if c.method == "ple" and c.paths.budget.is_file()]
    return [[{k: r.get(k) for k in FIGURE3_KEYS} for r in read_jsonl(c.paths.root / METRICS_JSONL)] for c in cells]


def branches_per_iteration(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Figure 3's series over PLE's seeds: for each iteration every seed reached and each key, the mean, min and
    max over the seeds that logged it (None where none did)."""
    rows = []
    for t in range(min((len(r) for r in runs), default=0)):
        row = {}
        for key in FIGURE3_KEYS:
            values = [r[t][key] for r in runs if r[t].get(key) is not None]
            row[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)} if values else None
        rows.append(row)
    return {"seeds": len(runs), "iterations": rows}


def _day(name: str) -> str:
    """YYYY-MM-DD from an invocation record's name, which starts with its start time YYYYMMDDTHHMMSS."""
    return f"{name[:4]}-{name[4:6]}-{name[6:8]}"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def added_later(grid) -> dict[str, str]:
    """The methods every one of whose cells a later invocation than the grid's first trained, each with the day
    it was added (an invocation's file name starts with its start time, YYYYMMDDTHHMMSS)."""
    records = sorted((grid.output_dir / INVOCATIONS).glob("*.json"))
    later = {label: _day(path.name) for path in records[1:] for label in read_json(path).get("trained", [])}
    added = {}
    for method in grid.methods:
        days = [later.get(f"cell {c.label}") for c in grid.cells if c.method == method]
        if days and all(days):
            added[method] = max(days)
    return added
