"""The names of the files ple's evaluations write, in one place: an evaluation's directory (`ple eval --model`,
a grid's base/ and each eval/step_NNN), a judging's (`ple eval --compare`, a cell's vs_*), a grid's top level; and
the writers of an evaluation's and a judging's data (their views: ple.evaluation.evaluation_views)."""

from pathlib import Path
from typing import Any

from ple.io import atomic_write_jsonl, atomic_write_text, strict_json

# An evaluation's directory (ple.evaluation.evaluate.Evaluator.evaluate)
EVAL_JSON = "eval.json"  # every metric with its interval, the settings
COMPLETIONS = "completions.jsonl"  # one row per prompt: the answer, its scores, KL and NLL
EVAL_MD = "eval.md"  # its view
MADE_FROM = "made_from.json"  # in a grid, beside an evaluation or a judging: what it was made from

# A judging's directory (ple.evaluation.pairwise.judge_pair)
COMPARE_JSON = "compare.json"  # the pair's win / tie / loss rates
COMPARE_ROWS = "compare_rows.jsonl"  # one row per prompt and order
COMPARE_MD = "compare.md"
WIN_RATE_PNG = "win_rate.png"

# A grid's top level (ple.evaluation.grid)

GRID_FILE = "compare.yaml"  # the grid as run, stated as a compare file
GRID_MARKER = ".ple-compare"  # written first into a new grid directory: what tells a grid from a user's folder
INVOCATIONS = "invocations"  # one record per `ple compare` invocation (grid.Invocation)
BASE = "base"  # the base model's evaluation
BASE_DRAWS = "base_draws"  # its further draws, for best-of-n
CELLS = "cells"  # cells/<method>/lr_<rate>/seed<seed>: one training run each
LR_GRID = "lr_grid"  # the learning-rate tuning runs
LR_GRID_JSON = "lr_grid.json"  # the rates they chose
GRID_DIRS = (BASE, BASE_DRAWS, CELLS, LR_GRID, INVOCATIONS)  # the folders a grid writes at its top
RESULTS_JSON = "results.json"  # the grid's table, differences and logs (ple.evaluation.results.analyse_results)
RESULTS_MD = "results.md"  # its view (ple.evaluation.results_views), rendered from results.json
FRONTIER_JSON = "frontier.json"  # the frontier's analysis (ple.evaluation.frontier.analyse)
PROBE_JSON = "probe.json"  # the judge probe (ple.evaluation.frontier.probe)
FRONTIER_MD = "frontier.md"  # its views (ple.evaluation.frontier_views), rendered from frontier.json
FRONTIER_POINTS_CSV = "frontier_points.csv"


def rate_dir(rate: float) -> str:
    return f"lr_{rate:g}"


def cell_label(method: str, rate: float, seed: int) -> str:
    """A cell's name in messages and tables, which is also its folder under cells/: method/lr_<rate>/seed<seed>."""
    return f"{method}/{rate_dir(rate)}/seed{seed}"


def write_evaluation(out_dir: Path, rows: list[dict], result: dict[str, Any]) -> None:
    """An evaluation's data: completions.jsonl (without the token ids) and eval.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    hidden = ("prompt_ids", "response_ids")
    atomic_write_jsonl(out_dir / COMPLETIONS, [{k: v for k, v in r.items() if k not in hidden} for r in rows])
    atomic_write_text(out_dir / EVAL_JSON, strict_json(result, indent=2))


def write_comparison(out_dir: Path, result: dict[str, Any], rows: list[dict]) -> None:
    """A judging's data: compare_rows.jsonl (one row per prompt), then compare.json, whose presence says the judging
    is whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out_dir / COMPARE_ROWS, rows)
    atomic_write_text(out_dir / COMPARE_JSON, strict_json(result, indent=2))
