"""Before/after report for a run: summary.json, report.md and PNG plots."""

from pathlib import Path
from typing import Any

from ple.io import atomic_write_text, read_jsonl, strict_json
from ple.training.rundir import METRICS_JSONL


def _plot_iterations(metrics: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    its = [m["iteration"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(its, [m["mean_s"] for m in metrics], "o-", label="plain response  s = r(x, y)")
    ax.plot(its, [m["mean_s_p"] for m in metrics], "s-", label="principle-guided  s_p = r(x, y_p)")
    ax.set(xlabel="iteration", ylabel="mean training reward", title="Reward per iteration (cf. the paper's Fig. 3)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_per_iteration.png", dpi=120)
    plt.close(fig)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    top.plot(its, [m["tau"] for m in metrics], "o-", color="black")
    top.set(ylabel="tau_t", title="Threshold and branches per iteration")
    bottom.stackplot(
        its,
        [m["frac_rank"] for m in metrics],
        [m["frac_wsft"] for m in metrics],
        [m["frac_skip"] for m in metrics],
        labels=["rank", "weighted SFT", "skip"],
    )
    bottom.set(xlabel="iteration", ylabel="fraction of queries", ylim=(0, 1))
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(out / "tau_and_branches.png", dpi=120)
    plt.close(fig)
    return ["reward_per_iteration.png", "tau_and_branches.png"]


def _plot_distributions(before: list[dict], after: list[dict], keys: dict[str, str], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
    for ax, (key, label) in zip(list(getattr(axes, "flat", [axes])), keys.items()):
        ax.hist([r[key] for r in before], bins=20, alpha=0.6, label="before")
        ax.hist([r[key] for r in after], bins=20, alpha=0.6, label="after")
        ax.set(xlabel=label, ylabel="eval prompts")
        ax.legend()
    fig.suptitle("Distributions on the eval prompts (plain prompt, no principle)")
    fig.tight_layout()
    fig.savefig(out / "reward_distributions.png", dpi=120)
    plt.close(fig)
    return "reward_distributions.png"


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _examples(before: list[dict], after: list[dict], n: int, flag: tuple[str, float, str] | None) -> list[str]:
    """n prompts spread evenly over the eval set (not chosen by score), with both answers; `flag` marks some."""
    lines = ["## Examples", "", "| prompt | before | after |", "|---|---|---|"]
    step = max(1, len(before) // n)
    for b, a in list(zip(before, after))[::step][:n]:
        shown = [(flag[2] if flag and r.get(flag[0]) == flag[1] else "") + _cell(r["completion"]) for r in (b, a)]
        lines.append(f"| {_cell(str(b['prompt']))} | {shown[0]} | {shown[1]} |")
    return lines


def write_report(
    run_dir: Path,
    summary: dict[str, dict[str, Any]],
    labels: dict[str, str],
    before: list[dict],
    after: list[dict],
    distribution_keys: dict[str, str],
    notes: list[str],
    n_examples: int = 6,
    flag: tuple[str, float, str] | None = None,
) -> Path:
    """summary.json, the plots and report.md in run_dir; returns the report's path. `flag` = (column, value, mark):
    an example answer whose row holds that value in that column is shown with the mark before it."""
    atomic_write_text(run_dir / "summary.json", strict_json(summary, indent=2))
    metrics = read_jsonl(run_dir / METRICS_JSONL)
    plots = _plot_iterations(metrics, run_dir) + [_plot_distributions(before, after, distribution_keys, run_dir)]

    lines = [
        "# PLE run report",
        "",
        *notes,
        "",
        f"## Before and after training ({len(before)} held-out prompts, plain prompt, no principle)",
        "",
        "| metric | before | after | change | 95% CI of change |",
        "|---|---:|---:|---:|---|",
    ]
    for key, s in summary.items():
        lines.append(
            f"| {labels.get(key, key)} | {s['before']:.4f} | {s['after']:.4f} | {s['delta']:+.4f} "
            f"| [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}] |"
        )
    lines += [
        "",
        "CIs: paired bootstrap over prompts, 1,000 resamples.",
        "",
        "## Training",
        "",
        "| iteration | tau | mean s | mean s_p | rank | wsft | skip | loss | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in metrics:
        loss = "n/a" if m["loss"] is None else f"{m['loss']:.4f}"
        lines.append(
            f"| {m['iteration']} | {m['tau']:.4g} | {m['mean_s']:.4f} | {m['mean_s_p']:.4f} | {m['n_rank']} "
            f"| {m['n_wsft']} | {m['n_skip']} | {loss} | {m['seconds']:.1f} |"
        )
    lines += [
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        *_examples(before, after, n_examples, flag),
    ]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
