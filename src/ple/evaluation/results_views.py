"""A comparison grid's views: results.md, its CSVs and plots, rendered from results.json (ple.evaluation.results)
and the other results files beside it (lr_grid.json, frontier.json, invocations/), computing no statistic."""

import math
from pathlib import Path

import numpy as np

from ple.evaluation.evaluate import reward_label
from ple.evaluation.evaluation_views import number_text
from ple.evaluation.layout import FRONTIER_JSON, FRONTIER_MD, INVOCATIONS, LR_GRID_JSON, RESULTS_JSON, RESULTS_MD
from ple.evaluation.metrics import METRICS
from ple.evaluation.results import wide
from ple.evaluation.verdict import claim_sentence, display, diversity_sentence, verdict
from ple.io import atomic_write_csv, atomic_write_text, read_json


def render_results(out: Path) -> Path | None:
    """results.md with its CSVs and plots in `out`, from out/results.json; None without it."""
    if not (out / RESULTS_JSON).is_file():
        return None
    result = read_json(out / RESULTS_JSON)
    base, rows, summary, columns = result["base"], result["rows"], result["summary"], result["columns"]
    atomic_write_csv(out / "results_long.csv", rows)
    atomic_write_csv(out / "results.csv", summary)
    atomic_write_csv(out / "cells.csv", wide(rows))
    _plot_win_rates(summary, out / "win_rates.png")
    _plot_reward_vs_samples(summary, base, result["judge"], out / "heldout_vs_samples.png")
    lines = [
        "# Method comparison",
        "",
        f"{_seed_counts(result)}: mean ± std over seeds. Every model answers the same "
        f"{base['n_prompts'] if base else '?'} held-out prompts. Win rates are judged in both orders by "
        f"the {reward_label(result['judge'])} (ties within {result['tie_margin']}).",
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
    lines += [
        "",
        "![win/tie/loss against the base model](win_rates.png)",
        "",
        "![held-out reward against policy samples used](heldout_vs_samples.png)",
        "",
        f"Every value: `results_long.csv` (method, learning rate, seed, step, metric, value); one row per cell: "
        f"`cells.csv`; means and stds: `results.csv`. Machine: {result['machine']}.",
    ]
    if result["missing"]:
        lines.append(f"Not finished yet: {', '.join(result['missing'])}.")
    lines += learning_rate_section(out) + difference_section(out, result) + figure3_section(out, result)
    lines += (frontier_section(out) if result.get("frontier") else []) + added_section(result) + cost_section(out)
    report = out / RESULTS_MD
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


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


def difference_section(out: Path, result: dict) -> list[str]:
    base, reference = result["base"], result["reference"]
    diffs = {m: _nan_for_null(d) for m, d in result["differences"].items()}
    if not diffs:
        return []
    atomic_write_csv(
        out / "differences.csv",
        [
            {"method": m, **{k: v for k, v in d.items() if k != "pairwise"}, **(d["pairwise"] or {})}
            for m, d in diffs.items()
        ],
    )
    ref = display(reference)
    lines = [
        "",
        f"## {ref} against each method",
        "",
        f"The held-out score of {ref} minus that of each method (`{result['judge']}`, mean over seeds "
        "and eval prompts), with a 95% interval from a bootstrap that resamples the shared seeds and, within each, "
        f"the prompts; and {ref}'s win / tie / loss rate against the method, judged in both orders by the same judge "
        f"(ties within {result['tie_margin']}), pooled over the shared seeds. `detectable` is the smallest true "
        "difference this grid finds with 80% power, (1.96 + 0.84) x the difference's standard error.",
        "",
        f"| {ref} minus | difference | 95% interval | seeds | {ref} wins / ties / loses | detectable |",
        "|---|---:|---|---:|---|---:|",
    ]
    for method, d in diffs.items():
        record = d["pairwise"]
        shown = "-" if record is None else f"{record['win']:.2f} / {record['tie']:.2f} / {record['loss']:.2f}"
        lines.append(
            f"| {method} | {number_text(d['delta'], '+.3f')} | [{number_text(d['ci_low'], '+.3f')}, "
            f"{number_text(d['ci_high'], '+.3f')}] | {d['seeds']} | {shown} | {number_text(d['detectable'], '.3f')} |"
        )
    detectable = result["detectable_median"]
    lines += [
        "",
        f"The smallest held-out difference this grid can detect (median over the methods): {number_text(detectable)}.",
        "",
        "### Verdict",
        "",
        *[f"- {verdict(reference, method, d)}." for method, d in diffs.items()],
        "",
        claim_sentence(diffs, reference),
    ]
    if base:
        summary = result["summary"]
        distinct_2 = {s["method"]: s["distinct_2_mean"] for s in summary if s.get("distinct_2_mean") is not None}
        base_distinct_2 = base["metrics"]["distinct_2"]["value"]  # null in JSON where it was nan
        lines += ["", diversity_sentence(math.nan if base_distinct_2 is None else base_distinct_2, distinct_2)]
    return lines


def figure3_section(out: Path, result: dict) -> list[str]:
    """The paper's Figure 3 for this task: the mean reward of the guided and the plain answers per iteration, and
    the fraction of ranked pairs, over PLE's seeds (results.branches_per_iteration)."""
    branches = result["ple_branches"]
    seeds, iterations = branches["seeds"], branches["iterations"]
    if not iterations:
        return []
    path = out / "figure3.png"
    _plot_figure3(iterations, seeds, path)
    keys = ("mean_s", "mean_s_p", "frac_rank", "frac_wsft", "n_rank_plain_wins", "wsft_weight_max_mean")
    lines = [
        "",
        f"![Figure 3: rewards and ranked pairs per iteration, {seeds} PLE seeds]({path.name})",
        "",
        f"### PLE's branches per iteration (mean over {seeds} seeds, from metrics.jsonl)",
        "",
        "| iteration | tau | " + " | ".join(keys) + " |",
        "|---:|---:|" + "---:|" * len(keys),
    ]
    for t, row in enumerate(iterations):
        lines.append(
            f"| {t} | " + " | ".join(f"{row[k]['mean']:.3f}" if row[k] else "-" for k in ("tau", *keys)) + " |"
        )
    return lines


def _plot_figure3(iterations: list[dict], seeds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = np.arange(len(iterations))

    def series(key, stat):
        return np.array([row[key][stat] if row[key] else np.nan for row in iterations], dtype=float)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
    for key, label, marker in (
        ("mean_s_p", "guided answers  s_p = r(x, y_p)", "s"),
        ("mean_s", "plain answers  s = r(x, y)", "o"),
    ):
        top.plot(its, series(key, "mean"), marker=marker, label=label)
        top.fill_between(its, series(key, "min"), series(key, "max"), alpha=0.2)
    top.set(ylabel="mean training reward", title=f"PLE per iteration: mean and range over {seeds} seeds")
    top.legend()
    bottom.plot(its, series("frac_rank", "mean"), marker="o", color="black")
    bottom.fill_between(its, series("frac_rank", "min"), series("frac_rank", "max"), color="black", alpha=0.15)
    bottom.set(xlabel="iteration", ylabel="fraction of pairs ranked", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def frontier_section(out: Path) -> list[str]:
    """The frontier's verdict from frontier.json (ple.evaluation.frontier), with frontier.md rendered from it; the
    table above is final models only and judges them without regard to KL or diversity."""
    from ple.evaluation.frontier_views import render_frontier

    if render_frontier(out) is None:
        return []
    claim = read_json(out / FRONTIER_JSON)["claim"]
    details = f"Details: [{FRONTIER_MD}]({FRONTIER_MD})."
    return ["", "## The reward-KL frontier", "", claim or "No comparison yet.", "", details]


def _seed_counts(result: dict) -> str:
    """The seed count of the table's header, naming the methods whose seeds_per_method differs."""
    extra = ", ".join(f"{m} {n}" for m, n in result["seeds_per_method"].items())
    return f"{result['seeds']} seed(s) per method" + (f" ({extra})" if extra else "")


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


def added_section(result: dict) -> list[str]:
    added = result["added_later"]
    if not added:
        return []
    named = ", ".join(f"{m} (trained {day})" for m, day in added.items())
    return [
        "",
        f"Added after the grid's first run (started {result['first_invocation']}): {named}, under the same "
        "config, evaluation and rules; the other methods' cells were not rerun.",
    ]


def _nan_for_null(difference: dict) -> dict:
    """A difference read from results.json with JSON's null back to the nan it was written from."""
    numbers = ("delta", "ci_low", "ci_high", "se", "detectable")
    return {k: math.nan if k in numbers and v is None else v for k, v in difference.items()}


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
