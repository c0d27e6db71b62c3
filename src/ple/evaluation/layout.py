"""The names of what `ple compare` writes at the top of a grid directory, in one place."""

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
