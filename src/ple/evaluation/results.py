"""The results of a comparison grid (ple.evaluation.grid): the table of every method, PLE's difference from each
other method with its interval and its pairwise record, the verdict lines those intervals write, and the plots."""

import csv
import io
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ple.config import Config
from ple.evaluation.evaluate import judge_reward_name
from ple.evaluation.verdict import (
    claim_sentence,
    detectable_difference,
    diversity_sentence,
    hierarchical_difference,
    verdict,
)
from ple.io import atomic_write_text, read_jsonl

COLUMNS = {  # column -> (label, how to read it from a cell)
    "reward": ("training reward", lambda c: c["eval"]["metrics"].get("reward", {}).get("value")),
    "heldout": ("held-out reward", lambda c: _heldout(c["eval"])),
    "win_vs_base": ("win vs base", lambda c: _rate(c.get("vs_base"), "win")),
    "loss_vs_base": ("loss vs base", lambda c: _rate(c.get("vs_base"), "loss")),
    "win_vs_sft": ("win vs sft", lambda c: _rate(c.get("vs_sft"), "win")),
    "distinct_2": ("distinct-2", lambda c: c["eval"]["metrics"]["distinct_2"]["value"]),
    "perplexity": ("perplexity", lambda c: c["eval"]["metrics"]["generation_perplexity"]["value"]),
    "samples": ("samples", lambda c: c["budget"].get("samples")),
    "reward_calls": ("reward calls", lambda c: c["budget"].get("reward_calls")),
    "gen_tokens": ("tokens generated", lambda c: c["budget"].get("gen_tokens")),
    "minutes": ("train minutes", lambda c: c["budget"]["seconds"] / 60),
}


def _heldout(result: dict) -> float | None:
    key = next((k for k in result["metrics"] if k.startswith("heldout:")), None)
    return result["metrics"][key]["value"] if key else None


def _rate(compare: dict | None, key: str) -> float | None:
    return compare["rates"][key]["value"] if compare else None


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(spec: dict) -> tuple[dict, list[dict]]:
    """The base model's eval, and one row per finished cell with every COLUMNS value."""
    base = _read(spec["output_dir"] / "base" / "eval.json")
    rows = []
    for (method, seed), config in spec["cells"].items():
        cell = Path(config.output_dir)
        result = {
            "eval": _read(cell / "eval" / "eval.json"),
            "budget": _read(cell / "budget.json"),
            "vs_base": _read(cell / "vs_base" / "compare.json"),
            "vs_sft": _read(cell / "vs_sft" / "compare.json"),
        }
        if result["eval"] is None or result["budget"] is None:
            continue
        rows.append({"method": method, "seed": seed, **{k: read(result) for k, (_, read) in COLUMNS.items()}})
        rows[-1]["ties_vs_base"] = _rate(result["vs_base"], "tie")
    return base, rows


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    """Mean and std over seeds of every column, per method."""
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        summary: dict[str, Any] = {"method": method, "seeds": len(mine)}
        for key in [*COLUMNS, "ties_vs_base"]:
            values = [r[key] for r in mine if r[key] is not None]
            summary[f"{key}_mean"] = statistics.fmean(values) if values else None
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        out.append(summary)
    return out


def write_results(spec: dict) -> Path:
    out = spec["output_dir"]
    base, rows = collect(spec)
    summary = summarise(rows, spec["methods"])
    _write_csv(out / "results.csv", summary)
    _write_csv(out / "cells.csv", rows)
    _plot_win_rates(summary, out / "win_rates.png")
    _plot_reward_vs_samples(summary, base, out / "heldout_vs_samples.png")
    shown = [
        "reward",
        "heldout",
        "win_vs_base",
        "loss_vs_base",
        "win_vs_sft",
        "distinct_2",
        "perplexity",
        "samples",
        "minutes",
    ]
    header = "| method | " + " | ".join(COLUMNS[k][0] for k in shown) + " |"
    lines = [
        "# Method comparison",
        "",
        f"{_seed_counts(spec)}: mean ± std over seeds. Every model answers the same "
        f"{base['n_prompts'] if base else '?'} held-out prompts. Win rates are judged in both orders by "
        f"the {_judge_name(spec['base'])} (ties within {spec['tie_margin']}).",
        "",
        header,
        "|---|" + "---:|" * len(shown),
    ]
    if base:
        values = {k: COLUMNS[k][1]({"eval": base}) for k in ("reward", "heldout", "distinct_2", "perplexity")}
        values["samples"] = 0
        lines.append("| base model | " + " | ".join(_cell(values.get(k), None, k) for k in shown) + " |")
    for s in summary:
        lines.append(f"| {s['method']} | " + " | ".join(_cell(s[f"{k}_mean"], s[f"{k}_std"], k) for k in shown) + " |")
    missing = [f"{m}/seed{s}" for (m, s) in spec["cells"] if not any(r["method"] == m and r["seed"] == s for r in rows)]
    lines += [
        "",
        "![win/tie/loss against the base model](win_rates.png)",
        "",
        "![held-out reward against policy samples used](heldout_vs_samples.png)",
        "",
        f"Per-cell values: `cells.csv`; means and stds: `results.csv`. Machine: {platform.machine()}, "
        f"{_threads()} torch threads.",
    ]
    if missing:
        lines.append(f"Not finished yet: {', '.join(missing)}.")
    diversity = {s["method"]: s["distinct_2_mean"] for s in summary}
    lines += learning_rate_section(out) + difference_section(spec, base, diversity)
    lines += figure3_section(spec) + cost_section(out)
    report = out / "results.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def _seed_counts(spec: dict) -> str:
    """The seed count of the table's header, naming the methods whose seeds_per_method differs."""
    others = {m: len(seeds) for m, seeds in spec["seeds_per_method"].items() if len(seeds) != len(spec["seeds"])}
    extra = ", ".join(f"{m} {n}" for m, n in others.items())
    return f"{len(spec['seeds'])} seed(s) per method" + (f" ({extra})" if extra else "")


def learning_rate_section(out: Path) -> list[str]:
    """The lr grid's validation scores and the chosen rate per method (lr_grid.json, from ple.evaluation.grid)."""
    path = out / "lr_grid.json"
    if not path.is_file():
        return []
    grid = json.loads(path.read_text())
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


def scores_by_seed(spec: dict, method: str, key: str) -> dict[int, np.ndarray]:
    """seed -> the held-out score of each eval prompt, for the finished cells of `method`."""
    out = {}
    for (m, seed), config in spec["cells"].items():
        path = Path(config.output_dir) / "eval" / "completions.jsonl"
        if m == method and path.is_file():
            out[seed] = np.array([np.nan if r.get(key) is None else float(r[key]) for r in read_jsonl(path)])
    return out


def pairwise_record(spec: dict, method: str) -> dict[str, float] | None:
    """PLE's win / tie / loss rates against `method`, judged in both orders, pooled over their shared seeds."""
    outcomes = []
    for (m, _), config in spec["cells"].items():
        path = Path(config.output_dir) / "vs_ple" / "compare_rows.jsonl"
        if m == method and path.is_file():
            outcomes += [r["outcome"] for r in read_jsonl(path)]  # A is PLE
    if not outcomes:
        return None
    return {k: sum(o == k for o in outcomes) / len(outcomes) for k in ("win", "tie", "loss")}


def differences(spec: dict) -> dict[str, dict[str, Any]]:
    """PLE minus every other method in held-out score (ple.evaluation.verdict), with PLE's pairwise record."""
    key = judge_reward_name(spec["base"])
    ple = scores_by_seed(spec, "ple", key)
    out = {}
    for method in spec["methods"]:
        other = scores_by_seed(spec, method, key)
        if method == "ple" or not ple or not set(ple) & set(other):
            continue
        out[method] = {**hierarchical_difference(ple, other), "pairwise": pairwise_record(spec, method)}
    return out


def difference_section(spec: dict, base: dict | None, distinct_2: dict[str, float]) -> list[str]:
    diffs = differences(spec)
    if not diffs:
        return []
    _write_csv(
        spec["output_dir"] / "differences.csv",
        [
            {"method": m, **{k: v for k, v in d.items() if k != "pairwise"}, **(d["pairwise"] or {})}
            for m, d in diffs.items()
        ],
    )
    lines = [
        "",
        "## PLE against each method",
        "",
        f"The held-out score of PLE minus that of each method (`{judge_reward_name(spec['base'])}`, mean over seeds "
        "and eval prompts), with a 95% interval from a bootstrap that resamples the shared seeds and, within each, "
        "the prompts; and PLE's win / tie / loss rate against the method, judged in both orders by the same judge "
        f"(ties within {spec['tie_margin']}), pooled over the shared seeds. `detectable` is the smallest true "
        "difference this grid finds with 80% power, (1.96 + 0.84) x the difference's standard error.",
        "",
        "| PLE minus | difference | 95% interval | seeds | PLE wins / ties / loses | detectable |",
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
        *[f"- {verdict(method, d)}." for method, d in diffs.items()],
        "",
        claim_sentence(diffs),
    ]
    if base:
        lines += ["", diversity_sentence(base["metrics"]["distinct_2"]["value"], distinct_2)]
    return lines


def figure3_section(spec: dict) -> list[str]:
    """The paper's Figure 3 for this task: the mean reward of the guided and the plain answers per iteration, and
    the fraction of ranked pairs, over PLE's seeds."""
    runs = [
        read_jsonl(Path(c.output_dir) / "metrics.jsonl")
        for (m, _), c in spec["cells"].items()
        if m == "ple" and (Path(c.output_dir) / "budget.json").is_file()
    ]
    if not runs:
        return []
    path = spec["output_dir"] / "figure3.png"
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
    runs = [json.loads(p.read_text()) for p in sorted((out / "invocations").glob("*.json"))]
    if not runs:
        return []
    hours = sum(r["seconds"] for r in runs) / 3600
    peak = max(r["peak_rss_gb"] for r in runs)
    return [
        "",
        f"Wall time: {hours:.2f} h over {len(runs)} invocation(s) of `ple compare`; peak memory (RSS of one "
        f"invocation): {peak:.1f} GB.",
    ]


def _write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["method"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def _judge_name(config: Config) -> str:
    name = judge_reward_name(config)
    return f"held-out reward `{name.split(':', 1)[1]}`" if name != "reward" else "training reward"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _cell(mean, std=None, key: str = "") -> str:
    if mean is None:
        return "-"
    if key in ("samples",):
        return f"{mean:.0f}"
    digits = 1 if key in ("perplexity", "minutes") else 3
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _plot_win_rates(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in summary if s["win_vs_base_mean"] is not None]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    names = [s["method"] for s in rows]
    left = [0.0] * len(rows)
    for key, label, color in (("win", "win", "tab:green"), ("ties", "tie", "tab:gray"), ("loss", "loss", "tab:red")):
        values = [s[f"{key}_vs_base_mean"] or 0.0 for s in rows]
        ax.barh(names, values, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="fraction of prompts against the base model (both orders, mean over seeds)")
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_reward_vs_samples(summary: list[dict], base: dict | None, path: Path) -> None:
    """Held-out reward against the policy samples a method drew: the base model at 0, each method's final model
    at its budget (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    start = _heldout(base) if base else None
    for s in summary:
        y, err, x = s["heldout_mean"], s["heldout_std"], s["samples_mean"]
        if y is None or x is None:
            continue
        line = ax.errorbar([x], [y], yerr=[err or 0.0], marker="o", capsize=3, label=s["method"])
        if start is not None:
            ax.plot([0, x], [start, y], color=line[0].get_color(), alpha=0.5)
    if start is not None:
        ax.scatter([0], [start], color="black", zorder=3, label="base model")
    ax.set(xlabel="policy samples drawn in training", ylabel="held-out reward (eval prompts)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
