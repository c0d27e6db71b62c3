"""The views of one evaluation (eval.md from eval.json) and of one judging (compare.md and win_rate.png from
compare.json), rendered from those files alone, so that `ple report` can redraw them."""

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
        value, low, high = (_number(v[k], digits) for k in ("value", "ci_low", "ci_high"))
        lines.append(f"| {key} | {value} | [{low}, {high}] | {v['n']} |")
    return "\n".join(lines) + "\n"


def _number(value: float | None, digits: int) -> str:
    """A number as the table shows it; null (a NaN, as strict JSON holds it) reads nan."""
    return f"{float('nan') if value is None else value:.{digits}f}"


def render_evaluation(out_dir: Path) -> Path:
    path = out_dir / EVAL_MD
    atomic_write_text(path, evaluation_markdown(read_json(out_dir / EVAL_JSON)))
    return path


def comparison_table(result: dict[str, Any]) -> str:
    table = ["| outcome for A | rate | 95% CI |", "|---|---:|---|"]
    rates = result["rates"]
    for k, v in rates.items():
        table.append(f"| {k} | {_number(v['value'], 3)} | [{_number(v['ci_low'], 3)}, {_number(v['ci_high'], 3)}] |")
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
