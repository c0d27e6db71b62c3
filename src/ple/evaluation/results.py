"""The results of a comparison grid (ple.evaluation.grid): the table of every method, PLE's difference from each
other method with its interval and its pairwise record, the verdict lines those intervals write, and the plots."""

import csv
import io
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ple.evaluation.evaluate import COMPLETIONS, EVAL_JSON, HELDOUT, judge_reward_name, reward_label
from ple.evaluation.layout import FRONTIER_JSON, FRONTIER_MD, INVOCATIONS, LR_GRID_JSON
from ple.evaluation.metrics import METRICS
from ple.evaluation.pairwise import COMPARE_JSON
from ple.evaluation.stats import detectable_difference, hierarchical_difference
from ple.evaluation.verdict import claim_sentence, display, diversity_sentence, verdict
from ple.io import atomic_write_text, read_json, read_json_if_present, read_jsonl
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


def write_results(grid) -> Path:
    out = grid.output_dir
    base, rows = long_table(grid)
    summary = summarise(rows, grid.methods)
    _write_csv(out / "results_long.csv", rows)
    _write_csv(out / "results.csv", summary)
    _write_csv(out / "cells.csv", wide(rows))
    _plot_win_rates(summary, out / "win_rates.png")
    _plot_reward_vs_samples(summary, base, judge_reward_name(grid.base), out / "heldout_vs_samples.png")
    columns = table_columns(grid, base)
    lines = [
        "# Method comparison",
        "",
        f"{_seed_counts(grid)}: mean ± std over seeds. Every model answers the same "
        f"{base['n_prompts'] if base else '?'} held-out prompts. Win rates are judged in both orders by "
        f"the {reward_label(judge_reward_name(grid.base))} (ties within {grid.tie_margin}).",
        "",
        "| method | lr | " + " | ".join(columns.values()) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    if base:
        values = {k: v["value"] for k, v in base["metrics"].items()} | {"samples": 0}
        lines.append("| base model | - | " + " | ".join(_cell(values.get(k), None, k) for k in columns) + " |")
    for s in summary:
        shown = " | ".join(_cell(s.get(f"{k}_mean"), s.get(f"{k}_std"), k) for k in columns)
        lines.append(f"| {s['method']} | {s['learning_rate']:g} | {shown} |")
    finished = {(r["method"], r["learning_rate"], r["seed"]) for r in rows}
    missing = [c.label for c in grid.cells if c.key not in finished]
    lines += [
        "",
        "![win/tie/loss against the base model](win_rates.png)",
        "",
        "![held-out reward against policy samples used](heldout_vs_samples.png)",
        "",
        f"Every value: `results_long.csv` (method, learning rate, seed, step, metric, value); one row per cell: "
        f"`cells.csv`; means and stds: `results.csv`. Machine: {platform.machine()}, {_threads()} torch threads.",
    ]
    if missing:
        lines.append(f"Not finished yet: {', '.join(missing)}.")
    diversity = {s["method"]: s["distinct_2_mean"] for s in summary if s.get("distinct_2_mean") is not None}
    lines += learning_rate_section(out) + difference_section(grid, base, diversity)
    lines += figure3_section(grid) + frontier_section(grid) + added_section(grid) + cost_section(out)
    report = out / "results.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def frontier_section(grid) -> list[str]:
    """The frontier's verdict from frontier.json (ple.evaluation.frontier), with frontier.md rendered from it; the
    table above is final models only and judges them without regard to KL or diversity."""
    from ple.evaluation.frontier_views import render_frontier

    if grid.frontier is None or render_frontier(grid.output_dir) is None:
        return []
    claim = read_json(grid.output_dir / FRONTIER_JSON)["claim"]
    details = f"Details: [{FRONTIER_MD}]({FRONTIER_MD})."
    return ["", "## The reward-KL frontier", "", claim or "No comparison yet.", "", details]


def _seed_counts(grid) -> str:
    """The seed count of the table's header, naming the methods whose seeds_per_method differs."""
    others = {m: len(seeds) for m, seeds in grid.seeds_per_method.items() if len(seeds) != len(grid.seeds)}
    extra = ", ".join(f"{m} {n}" for m, n in others.items())
    return f"{len(grid.seeds)} seed(s) per method" + (f" ({extra})" if extra else "")


def learning_rate_section(out: Path) -> list[str]:
    """The lr grid's validation scores and the chosen rate per method (lr_grid.json, from ple.evaluation.grid)."""
    path = out / LR_GRID_JSON
    if not path.is_file():
        return []
    grid = read_json(path)
    rates = sorted({float(r) for scores in grid["scores"].values() for r in scores})
    lines = [
        "",
        "## Learning rates",
        "",
        f"Each method's learning rate is the best of the grid by the held-out judge (`{grid['judge']}`) on "
        f"{grid['validation_prompts']} validation prompts from the training pool (never the eval prompts), after a "
        f"short run: {grid['iterations']} iterations x {grid['queries_per_iteration']} queries, seed {grid['seed']}.",
        "",
        "| method | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen |",
        "|---|" + "---:|" * (len(rates) + 1),
    ]
    for method, scores in grid["scores"].items():
        cells = [scores.get(f"{r:g}") for r in rates]
        shown = " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
        fixed = grid["fixed_by_overrides"].get(method)
        chosen = f"{fixed:g} (set by overrides)" if fixed is not None else f"{grid['chosen'][method]:g}"
        lines.append(f"| {method} | {shown} | {chosen} |")
    return lines


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
        path = cell.paths.vs(grid.reference) / "compare_rows.jsonl"
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


def difference_section(grid, base: dict | None, distinct_2: dict[str, float]) -> list[str]:
    diffs = differences(grid)
    if not diffs:
        return []
    _write_csv(
        grid.output_dir / "differences.csv",
        [
            {"method": m, **{k: v for k, v in d.items() if k != "pairwise"}, **(d["pairwise"] or {})}
            for m, d in diffs.items()
        ],
    )
    ref = display(grid.reference)
    lines = [
        "",
        f"## {ref} against each method",
        "",
        f"The held-out score of {ref} minus that of each method (`{judge_reward_name(grid.base)}`, mean over seeds "
        "and eval prompts), with a 95% interval from a bootstrap that resamples the shared seeds and, within each, "
        f"the prompts; and {ref}'s win / tie / loss rate against the method, judged in both orders by the same judge "
        f"(ties within {grid.tie_margin}), pooled over the shared seeds. `detectable` is the smallest true "
        "difference this grid finds with 80% power, (1.96 + 0.84) x the difference's standard error.",
        "",
        f"| {ref} minus | difference | 95% interval | seeds | {ref} wins / ties / loses | detectable |",
        "|---|---:|---|---:|---|---:|",
    ]
    for method, d in diffs.items():
        record = d["pairwise"]
        shown = "-" if record is None else f"{record['win']:.2f} / {record['tie']:.2f} / {record['loss']:.2f}"
        lines.append(
            f"| {method} | {d['delta']:+.3f} | [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['seeds']} | {shown} "
            f"| {detectable_difference(d['se']):.3f} |"
        )
    detectable = statistics.median(detectable_difference(d["se"]) for d in diffs.values())
    lines += [
        "",
        f"The smallest held-out difference this grid can detect (median over the methods): {detectable:.3f}.",
        "",
        "### Verdict",
        "",
        *[f"- {verdict(grid.reference, method, d)}." for method, d in diffs.items()],
        "",
        claim_sentence(diffs, grid.reference),
    ]
    if base:
        lines += ["", diversity_sentence(base["metrics"]["distinct_2"]["value"], distinct_2)]
    return lines


def figure3_section(grid) -> list[str]:
    """The paper's Figure 3 for this task: the mean reward of the guided and the plain answers per iteration, and
    the fraction of ranked pairs, over PLE's seeds."""
    cells = [c for c in grid.cells if c.method == "ple" and c.paths.budget.is_file()]
    runs = [read_jsonl(c.paths.root / METRICS_JSONL) for c in cells]
    if not runs:
        return []
    path = grid.output_dir / "figure3.png"
    _plot_figure3(runs, path)
    keys = ("mean_s", "mean_s_p", "frac_rank", "frac_wsft", "n_rank_plain_wins", "wsft_weight_max_mean")
    lines = [
        "",
        f"![Figure 3: rewards and ranked pairs per iteration, {len(runs)} PLE seeds]({path.name})",
        "",
        f"### PLE's branches per iteration (mean over {len(runs)} seeds, from metrics.jsonl)",
        "",
        "| iteration | tau | " + " | ".join(keys) + " |",
        "|---:|---:|" + "---:|" * len(keys),
    ]
    for t in range(min(len(r) for r in runs)):
        values = [[r[t][k] for r in runs if r[t].get(k) is not None] for k in ("tau", *keys)]
        lines.append(f"| {t} | " + " | ".join(f"{statistics.fmean(v):.3f}" if v else "-" for v in values) + " |")
    return lines


def _plot_figure3(runs: list[list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(r) for r in runs)
    its = np.arange(n)

    def series(key):
        return np.array([[r[t][key] for t in range(n)] for r in runs], dtype=float)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
    for key, label, marker in (
        ("mean_s_p", "guided answers  s_p = r(x, y_p)", "s"),
        ("mean_s", "plain answers  s = r(x, y)", "o"),
    ):
        values = series(key)
        top.plot(its, values.mean(0), marker=marker, label=label)
        top.fill_between(its, values.min(0), values.max(0), alpha=0.2)
    top.set(ylabel="mean training reward", title=f"PLE per iteration: mean and range over {len(runs)} seeds")
    top.legend()
    ranked = series("frac_rank")
    bottom.plot(its, ranked.mean(0), marker="o", color="black")
    bottom.fill_between(its, ranked.min(0), ranked.max(0), color="black", alpha=0.15)
    bottom.set(xlabel="iteration", ylabel="fraction of pairs ranked", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cost_section(out: Path) -> list[str]:
    runs = [read_json(p) for p in sorted((out / INVOCATIONS).glob("*.json"))]
    if not runs:
        return []
    hours = sum(r["seconds"] for r in runs) / 3600
    peak = max(r["peak_rss_gb"] for r in runs)
    return [
        "",
        f"Wall time: {hours:.2f} h over {len(runs)} invocation(s) of `ple compare`; peak memory (RSS of one "
        f"invocation): {peak:.1f} GB.",
    ]


def added_later(grid) -> dict[str, str]:
    """The methods every one of whose cells a later invocation than the grid's first trained, each with the day
    it was added (an invocation's file name starts with its start time, YYYYMMDDTHHMMSS)."""
    records = sorted((grid.output_dir / INVOCATIONS).glob("*.json"))
    later = {label: path.name[:8] for path in records[1:] for label in read_json(path).get("trained", [])}
    added = {}
    for method in grid.methods:
        days = [later.get(f"cell {c.label}") for c in grid.cells if c.method == method]
        if days and all(days):
            added[method] = f"{max(days)[:4]}-{max(days)[4:6]}-{max(days)[6:]}"
    return added


def added_section(grid) -> list[str]:
    added = added_later(grid)
    if not added:
        return []
    first = sorted((grid.output_dir / INVOCATIONS).glob("*.json"))[0].name[:8]
    named = ", ".join(f"{m} (trained {day})" for m, day in added.items())
    return [
        "",
        f"Added after the grid's first run (started {first[:4]}-{first[4:6]}-{first[6:]}): {named}, under the same "
        "config, evaluation and rules; the other methods' cells were not rerun.",
    ]


def _write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["method"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cell(mean, std=None, key: str = "") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    digits = {"samples": 0, "minutes": 1}.get(key, METRICS[key].digits if key in METRICS else 3)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _plot_win_rates(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summary if s.get("win_vs_base_mean") is not None]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    names = [f"{s['method']} (lr {s['learning_rate']:g})" for s in rows]
    left = [0.0] * len(rows)
    for key, label, color in (("win", "win", "tab:green"), ("tie", "tie", "tab:gray"), ("loss", "loss", "tab:red")):
        values = [s[f"{key}_vs_base_mean"] or 0.0 for s in rows]
        ax.barh(names, values, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="fraction of prompts against the base model (both orders, mean over seeds)")
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_reward_vs_samples(summary: list[dict], base: dict | None, key: str, path: Path) -> None:
    """Held-out reward against the policy samples a method drew: the base model at 0, each method's final model
    at its budget (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    start = base["metrics"][key]["value"] if base and key in base["metrics"] else None
    for s in summary:
        y, err, x = s.get(f"{key}_mean"), s.get(f"{key}_std"), s.get("samples_mean")
        if y is None or x is None:
            continue
        line = ax.errorbar([x], [y], yerr=[err or 0.0], marker="o", capsize=3, label=s["method"])
        if start is not None:
            ax.plot([0, x], [start, y], color=line[0].get_color(), alpha=0.5)
    if start is not None:
        ax.scatter([0], [start], color="black", zorder=3, label="base model")
    ax.set(xlabel="policy samples drawn in training", ylabel=f"{reward_label(key)} (eval prompts)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
