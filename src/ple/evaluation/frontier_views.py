"""The reward-KL frontier's views: frontier.md, frontier_points.csv and three plots, rendered from frontier.json
alone (ple.evaluation.frontier computes it), so that `ple report` re-renders a grid without a bootstrap."""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ple.evaluation.evaluate import reward_label
from ple.evaluation.frontier import BEST_OF_N, BRANCH_KEYS, Rules, rules_from
from ple.evaluation.layout import FRONTIER_JSON, FRONTIER_MD, FRONTIER_POINTS_CSV, GRID_FILE
from ple.evaluation.verdict import display
from ple.io import atomic_write_csv, atomic_write_text, read_json, read_yaml_file


def render_frontier(out: Path) -> Path | None:
    """frontier.md with its plots and frontier_points.csv in `out`, from out/frontier.json; None without it."""
    if not (out / FRONTIER_JSON).is_file():
        return None
    result = read_json(out / FRONTIER_JSON)
    if "sampling" not in result and (out / GRID_FILE).is_file():  # from before frontier.json recorded it
        evaluation = (read_yaml_file(out / GRID_FILE, "compare file") or {}).get("evaluation") or {}
        result["sampling"] = {k: evaluation[k] for k in ("temperature", "top_p", "top_k")}
    rules = rules_from(result["rules"])
    atomic_write_csv(out / FRONTIER_POINTS_CSV, result["points"])
    plot_frontier(result, rules, out / "frontier.png")
    plot_diversity(result, rules, out / "frontier_diversity.png")
    if result["differences"]:
        plot_forest(result, rules, out / "frontier_forest.png")
    path = out / FRONTIER_MD
    atomic_write_text(path, frontier_markdown(result, rules))
    return path


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def frontier_markdown(result: dict, rules: Rules) -> str:
    lines = header_section(result, rules) + verdict_section(result, rules) + envelope_section(result, rules)
    lines += best_of_n_section(result) + probe_section(result) + points_section(result)
    lines += growth_markdown(result["growth"])
    lines += ["", "Every number: `frontier.json`; every point: `frontier_points.csv`.", ""]
    return "\n".join(lines)


def header_section(result: dict, rules: Rules) -> list[str]:
    judge, base, sampling = reward_label(result["judge"]), result["base"], result["sampling"]
    n_checkpoints = sum(p["method"] != BEST_OF_N for p in result["points"])
    return [
        "# The reward-KL frontier",
        "",
        f"{n_checkpoints} checkpoint evaluations on {result['n_prompts']} held-out prompts, answers drawn at "
        f"temperature {sampling['temperature']:g}, top_p {sampling['top_p']:g}, top_k {sampling['top_k']}; the score "
        f"is the {judge}; KL is KL(pi || pi_base) in nats per answer (ple.evaluation.metrics.answer_kl). "
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
    ]


def verdict_section(result: dict, rules: Rules) -> list[str]:
    budgets = rules.budgets
    lines = [
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
            f"{display(result['reference'])} minus each method; intervals are the estimate ± {first['z']:.2f} "
            f"bootstrap standard errors (Bonferroni over {first['comparisons']} comparisons, family-wise "
            f"{1 - rules.family_error:.0%}).",
        ]
    return lines


def envelope_section(result: dict, rules: Rules) -> list[str]:
    budgets = rules.budgets
    lines = [
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
    return lines


def best_of_n_section(result: dict) -> list[str]:
    best = [p for p in result["points"] if p["method"] == BEST_OF_N]
    if not best:
        return []
    lines = [
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
    return lines


def probe_section(result: dict) -> list[str]:
    probe = result.get("probe")
    if not probe:
        return []
    top = max(
        (e["value"] for row in result["envelopes"].values() for e in row.values() if not math.isnan(e["value"])),
        default=math.nan,
    )
    reaches = not math.isnan(top) and probe["probe_judge"] >= top
    return [
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


def points_section(result: dict) -> list[str]:
    lines = [
        "",
        "## Every point",
        "",
        "![judge score against distinct-2](frontier_diversity.png)",
        "",
        "| method | lr | seed | step | KL | judge | distinct-2 | top-sentence share | admissible |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["points"]:
        if p["method"] == BEST_OF_N:
            continue
        lines.append(
            f"| {p['method']} | {p['learning_rate']:g} | {p['seed']} | {p['step']} | {_fmt(p['kl'])} | "
            f"{_fmt(p['judge'])} | {_fmt(p['distinct_2'])} | {_fmt(p['top_sentence_share'])} | "
            f"{'yes' if p['admissible'] else 'no'} |"
        )
    if result["differences"]:
        lines += ["", "![PLE minus each method at each budget](frontier_forest.png)"]
    return lines


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
