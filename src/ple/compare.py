"""`ple compare`: a methods x seeds grid under one budget, each final model evaluated, one table and two charts.

A compare file is YAML:

    output_dir: runs/compare
    methods: [ple, sft, dpo, rloo, raft, distill, rlcd]
    seeds: [0, 1]
    tie_margin: 0.05          # the pairwise judge calls reward differences up to this a tie
    config: {...}             # the training config every cell shares (any `ple train` key)
    overrides:                # per-method changes, e.g. a baseline's own learning rate
      rloo: {learning_rate: 1e-5}

Cells run one after another in output_dir/cells/METHOD/seedS. A cell whose evaluation is written is
never rerun; a killed cell resumes its training. The base model is evaluated once, in output_dir/base.
Win rates use a reward judge over both orders: the first held-out reward (eval_rewards) when there is
one, the training reward otherwise.
"""

import csv
import dataclasses
import gc
import io
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from ple.config import METHOD_PRESETS, Config, load_config
from ple.errors import PLEError
from ple.io import atomic_write_text

SPEC_KEYS = {"output_dir", "methods", "seeds", "tie_margin", "config", "overrides"}


def read_spec_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PLEError(f"compare file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PLEError(f"compare file {path} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_spec(raw: dict, config_overrides: dict | None = None) -> dict:
    """Check a compare mapping and build every cell's config; `config_overrides` win over its shared config."""
    if not isinstance(raw, dict):
        raise PLEError("a compare file must be a mapping with methods, seeds and config")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise PLEError(
            f"unknown compare key(s): {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(SPEC_KEYS))})"
        )
    methods, seeds = raw.get("methods") or [], raw.get("seeds", [0])
    if not isinstance(methods, list) or not methods:
        raise PLEError("compare: `methods` must be a non-empty list")
    bad = [m for m in methods if m not in METHOD_PRESETS]
    if bad:
        raise PLEError(
            f"compare: unknown method(s) {', '.join(map(str, bad))}; choose from {', '.join(METHOD_PRESETS)}"
        )
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise PLEError("compare: `seeds` must be a non-empty list of integers")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict) or any(
        m not in methods or not isinstance(v, dict) for m, v in overrides.items()
    ):
        raise PLEError("compare: `overrides` maps a listed method to a mapping of config keys")
    spec = {
        "output_dir": Path(raw.get("output_dir", "runs/compare")),
        "methods": list(dict.fromkeys(methods)),
        "seeds": list(dict.fromkeys(seeds)),
        "tie_margin": float(raw.get("tie_margin", 0.0)),
        "config": {**(raw.get("config") or {}), **(config_overrides or {})},
        "overrides": overrides,
    }
    spec["cells"] = {(m, s): cell_config(spec, m, s) for m in spec["methods"] for s in spec["seeds"]}
    base = load_config(overrides=_without_method(spec["config"]), validate=False)
    if base.eval_dataset is None:
        raise PLEError("compare: the config needs an eval_dataset (the prompts every model is evaluated on)")
    spec["base"] = base
    return spec


def _without_method(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "method"}


def cell_config(spec: dict, method: str, seed: int) -> Config:
    """The training config of one cell: the shared config, the method's overrides, its seed and run directory.
    Keys a method preset fixes (distill's reward, say) are dropped from the shared config for that method."""
    shared = {k: v for k, v in _without_method(spec["config"]).items() if k not in METHOD_PRESETS[method]}
    values = {
        **shared,
        **spec["overrides"].get(method, {}),
        "method": method,
        "seed": seed,
        "output_dir": str(spec["output_dir"] / "cells" / method / f"seed{seed}"),
    }
    try:
        return load_config(overrides=values)
    except PLEError as e:
        raise PLEError(f"compare cell {method}/seed{seed}: {e}") from None


def run_compare(spec: dict) -> Path:
    from ple import eval_cmd
    from ple.baselines import make_trainer
    from ple.cli import _quiet_libraries
    from ple.trainer import config_changes

    _quiet_libraries()  # also when called from Python rather than the CLI: our progress bars are the ones to watch

    out = spec["output_dir"]
    out.mkdir(parents=True, exist_ok=True)
    base = spec["base"]
    prompts = eval_cmd.eval_prompts(base, None)
    judge = _judge(base, spec["tie_margin"])
    atomic_write_text(out / "compare.yaml", yaml.safe_dump(_spec_for_file(spec), sort_keys=False))

    _evaluate_once(base.model, base, prompts, out / "base", "base model")
    cells = list(spec["cells"].items())
    started, done_here = time.perf_counter(), 0
    for n, ((method, seed), config) in enumerate(cells, 1):
        cell = Path(config.output_dir)
        if (cell / "eval" / "eval.json").is_file():
            changed = [k for k in config_changes(cell / "config.yaml", config) if k != "device"]
            if changed:
                raise PLEError(
                    f"compare cell {method}/seed{seed} finished with another config ({', '.join(changed)}); "
                    f"delete {cell} to rerun it, or choose another output_dir"
                )
            continue
        trainer = make_trainer(config)
        final = trainer.train(resume=(cell / "config.yaml").is_file())
        del trainer
        gc.collect()
        # Every model is evaluated alike: the shared config's rewards and generation settings, the cell's seed.
        evaluation = dataclasses.replace(base, seed=seed)
        _evaluate_once(str(final), evaluation, prompts, cell / "eval", f"{method}/seed{seed}", base.model)
        done_here += 1
        elapsed = time.perf_counter() - started
        left = sum(not (Path(c.output_dir) / "eval" / "eval.json").is_file() for _, c in cells)
        print(
            f"[{n}/{len(cells)}] {method} seed {seed} done; {elapsed / 60:.1f} min so far, "
            f"{elapsed / done_here / 60:.1f} min/cell, ETA {left * elapsed / done_here / 60:.0f} min",
            flush=True,
        )
    for (method, seed), config in cells:  # after every cell, so that each one has its sft counterpart
        cell = Path(config.output_dir)
        _judge_once(cell / "eval", out / "base", judge, cell / "vs_base")
        if "sft" in spec["methods"] and method != "sft":
            _judge_once(cell / "eval", Path(spec["cells"][("sft", seed)].output_dir) / "eval", judge, cell / "vs_sft")
    return write_results(spec)


def _spec_for_file(spec: dict) -> dict:
    keys = ("methods", "seeds", "tie_margin", "config", "overrides")
    return {"output_dir": str(spec["output_dir"]), **{k: spec[k] for k in keys}}


def _judge(config: Config, tie_margin: float):
    from ple.eval_cmd import _reward_specs
    from ple.judges import RewardJudge
    from ple.model import resolve_device
    from ple.rewards import config_reward

    specs = _reward_specs(config)
    name = _judge_reward(config)
    if name not in specs:
        raise PLEError("compare needs a reward or an eval_rewards entry to judge win rates")
    return RewardJudge(config_reward(specs[name], config, resolve_device(config.device)), tie_margin)


def _judge_reward(config: Config) -> str:
    """The reward that judges win rates: the first held-out one, else the training reward."""
    from ple.eval_cmd import _reward_specs

    return next((k for k in _reward_specs(config) if k.startswith("heldout:")), "reward")


def _evaluate_once(
    model: str, config: Config, prompts: list, out: Path, label: str, reference_model: str | None = None
) -> None:
    from ple.eval_cmd import evaluate_model
    from ple.progress import Progress

    if (out / "eval.json").is_file():
        return
    with Progress(total=1, description=f"eval {label}") as progress:
        evaluate_model(model, config, prompts, False, out, reference_model, progress)
        progress.advance()


def _judge_once(a: Path, b: Path, judge, out: Path) -> None:
    from ple.eval_cmd import compare_outputs, load_completions

    if (out / "compare.json").is_file():
        return
    compare_outputs(
        load_completions(str(a / "completions.jsonl")),
        load_completions(str(b / "completions.jsonl")),
        judge,
        str(a.parent),
        str(b.parent),
        out,
    )


# ---------------------------------------------------------------------- results
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
        f"{len(spec['seeds'])} seed(s) per method: mean ± std over seeds. Every model answers the same "
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
    report = out / "results.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def _write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["method"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def _judge_name(config: Config) -> str:
    name = _judge_reward(config)
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
