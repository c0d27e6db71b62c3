"""The views of one evaluation (eval.md from eval.json) and of one judging (compare.md and win_rate.png from
compare.json), rendered from those files alone, so that `ple report` can redraw them."""

import math
from pathlib import Path
from typing import Any

from ple.evaluation.layout import COMPARE_JSON, COMPARE_MD, EVAL_JSON, EVAL_MD, WIN_RATE_PNG
from ple.evaluation.metrics import METRICS
from ple.io import atomic_write_text, read_json


def evaluation_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation of `{result['model']}`",
        "",
        f"{result['n_prompts']} prompts, {'guided' if result['guided'] else 'plain'} prompt.",
        "",
        "| metric | value | 95% CI | n |",
        "|---|---:|---|---:|",
    ]
    for key, v in result["metrics"].items():
        digits = METRICS[key].digits if key in METRICS else 4
        value, low, high = (number_text(v[k], f".{digits}f") for k in ("value", "ci_low", "ci_high"))
        lines.append(f"| {key} | {value} | [{low}, {high}] | {v['n']} |")
    return "\n".join(lines) + "\n"


def number_text(value: float | None, spec: str = ".3f") -> str:
    """A number as `spec` formats it; nan where JSON holds null (strict JSON writes a nan as null)."""
    return format(math.nan if value is None else value, spec)


def render_evaluation(out_dir: Path) -> Path:
    path = out_dir / EVAL_MD
    atomic_write_text(path, evaluation_markdown(read_json(out_dir / EVAL_JSON)))
    return path


def comparison_table(result: dict[str, Any]) -> str:
    table = ["| outcome for A | rate | 95% CI |", "|---|---:|---|"]
    rates = result["rates"]
    for k, v in rates.items():
        value, low, high = (number_text(v[key]) for key in ("value", "ci_low", "ci_high"))
        table.append(f"| {k} | {value} | [{low}, {high}] |")
    return "\n".join(table)


def render_comparison(out_dir: Path) -> Path:
    result = read_json(out_dir / COMPARE_JSON)
    plot_win_rates(result["rates"], "A vs B", out_dir / WIN_RATE_PNG)
    path = out_dir / COMPARE_MD
    atomic_write_text(
        path,
        f"# A: `{result['a']}` vs B: `{result['b']}`\n\n{result['n_prompts']} prompts, each judged in both orders."
        f"\n\n{comparison_table(result)}\n\n![win rate]({WIN_RATE_PNG})\n",
    )
    return path


def plot_win_rates(rates: dict[str, dict[str, float]], label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.2))
    left = 0.0
    for key, color in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        value = rates[key]["value"]
        ax.barh([label], [value], left=left, color=color, label=f"{key} {value:.0%}")
        left += value
    ax.set(xlim=(0, 1), xlabel="fraction of prompts (judged in both orders)")
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
