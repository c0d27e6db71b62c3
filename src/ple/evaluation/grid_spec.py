"""A compare file (YAML) as a checked Grid of cells, and back (compare.yaml). The file's keys:

    output_dir: runs/compare
    methods: [ple, sft, dpo, rloo, raft, distill, rlcd]
    seeds: [0, 1]
    seeds_per_method: {rlcd: [0]}      # a method's own seeds (default: seeds)
    tie_margin: 0.05                   # the pairwise judge calls reward differences up to this a tie
    reference: ple                     # the method every other one is compared with (default ple)
    baseline: sft                      # the second pairwise column, "win vs sft" (default sft, when listed)
    learning_rates: [5e-5, 2e-4]       # every method at every rate, one cell each (default: the config's rate)
    lr_grid: {rates: [...], validation_dataset: ...}  # or: one rate per method, chosen on validation prompts
    config: {...}                      # the training config every cell shares (any `ple train` key)
    evaluation: {temperature: 1.0}     # sampling settings for the evaluations only (EVALUATION_KEYS)
    best_of_n: [1, 2, 4, 8, 16]        # the base model's best-of-n by the training reward, a training-free yardstick
    frontier: {budgets: [0.5, 1.5, 3]} # the reward-KL frontier's rules (ple.evaluation.frontier.Rules)
    overrides:                         # per-method changes, e.g. a baseline's own learning rate
      rloo: {learning_rate: 1e-5}

A cell is one (method, learning rate, seed); it trains in output_dir/cells/METHOD/lr_RATE/seedS (layout.cell_label).
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ple.config import Config, load_config
from ple.config_checks import generation_problems
from ple.errors import PLEError
from ple.evaluation.layout import BASE, BASE_DRAWS, CELLS, cell_label
from ple.io import read_yaml_file
from ple.methods import METHODS, get_method
from ple.training.rundir import BUDGET, CONFIG, FINAL, snapshot_dir, snapshot_steps, step_name

SPEC_KEYS = {
    "output_dir",
    "methods",
    "seeds",
    "seeds_per_method",
    "tie_margin",
    "reference",
    "baseline",
    "learning_rates",
    "lr_grid",
    "config",
    "overrides",
    "evaluation",
    "best_of_n",
    "frontier",
}
EVALUATION_KEYS = {"temperature", "top_p", "top_k", "max_new_tokens", "generation_batch_size", "eval_max_prompts"}
LR_GRID_KEYS = {"rates", "iterations", "queries_per_iteration", "validation_dataset", "validation_prompts", "seed"}


@dataclass(frozen=True)
class LRGrid:
    """One learning rate per method, chosen by the held-out judge after a short run at each rate, on validation
    prompts from the training pool (never the eval prompts)."""

    rates: tuple[float, ...]
    validation_dataset: str
    iterations: int = 3
    queries_per_iteration: int = 16
    validation_prompts: int = 100
    seed: int = 0


@dataclass(frozen=True)
class CellPaths:
    """Where a cell's files are: its run directory (ple.training.rundir) and its evaluations."""

    root: Path

    def eval(self, step: int) -> Path:
        return self.root / "eval" / step_name(step)

    def vs(self, other: str) -> Path:
        """Its pairwise judging against `other` (base, or a method)."""
        return self.root / f"vs_{other}"

    @property
    def budget(self) -> Path:
        return self.root / BUDGET

    @property
    def config(self) -> Path:
        return self.root / CONFIG


@dataclass(frozen=True)
class Cell:
    method: str
    learning_rate: float
    seed: int
    config: Config

    @property
    def key(self) -> tuple[str, float, int]:
        return self.method, self.learning_rate, self.seed

    @property
    def paths(self) -> CellPaths:
        return CellPaths(Path(self.config.output_dir))

    @property
    def final_step(self) -> int:
        return self.config.iterations

    @property
    def steps(self) -> list[int]:
        """The iteration counts its model is evaluated at: every snapshot, and the end."""
        return sorted({*snapshot_steps(self.config), self.final_step})

    def model_at(self, step: int) -> Path:
        return self.paths.root / FINAL if step == self.final_step else snapshot_dir(self.paths.root, step)

    @property
    def label(self) -> str:
        return cell_label(self.method, self.learning_rate, self.seed)


@dataclass(frozen=True)
class Grid:
    output_dir: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    base: Config  # the shared config without a method: the base model's evaluation settings
    config: Mapping[str, Any]  # the shared training config, as written
    seeds_per_method: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    tie_margin: float = 0.0
    reference: str = "ple"
    baseline: str | None = "sft"
    learning_rates: tuple[float, ...] | None = None
    lr_grid: LRGrid | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    chosen_rates: Mapping[str, float] = field(default_factory=dict)  # what the lr grid chose (tune_learning_rates)
    evaluation: Mapping[str, Any] = field(default_factory=dict)  # the evaluations' own sampling settings
    best_of_n: tuple[int, ...] = ()
    frontier: Mapping[str, Any] | None = None  # the frontier's rules as written (ple.evaluation.frontier.Rules)

    @property
    def base_dir(self) -> Path:
        return self.output_dir / BASE

    def base_draw(self, i: int) -> tuple[Path, int]:
        """(directory, seed) of the base model's i-th answer to every prompt, for best-of-n; draw 0 is its
        evaluation itself."""
        if i == 0:
            return self.base_dir, self.base.seed
        return self.output_dir / BASE_DRAWS / f"draw_{i:02d}", self.base.seed + i

    def method_seeds(self, method: str) -> tuple[int, ...]:
        return self.seeds_per_method.get(method, self.seeds)

    def rates(self, method: str) -> tuple[float, ...]:
        """The method's learning rates: the grid's list, else the one its overrides, the lr grid or the shared
        config give (in that order)."""
        if self.learning_rates is not None:
            return self.learning_rates
        fixed = self.overrides.get(method, {}).get("learning_rate", self.chosen_rates.get(method))
        return (float(fixed if fixed is not None else self.base.learning_rate),)

    @cached_property
    def cells(self) -> tuple[Cell, ...]:
        """Every cell, built once per grid (a grid with chosen rates is a new grid, dataclasses.replace)."""
        return tuple(
            self.cell(m, rate, s) for m in self.methods for rate in self.rates(m) for s in self.method_seeds(m)
        )

    def cell(self, method: str, rate: float, seed: int, root: Path | None = None, **changes) -> Cell:
        """One cell: the shared config (less the keys the method's preset fixes, such as distill's reward), the
        method's overrides, the rate, the seed and the run directory, then `changes`."""
        preset = get_method(method).preset
        shared = {k: v for k, v in self.config.items() if k != "method" and k not in preset}
        directory = root or self.output_dir / CELLS / cell_label(method, rate, seed)
        values = {
            **shared,
            **self.overrides.get(method, {}),
            "learning_rate": rate,
            "method": method,
            "seed": seed,
            "output_dir": str(directory),
            **changes,
        }
        try:
            config = load_config(overrides=values)
        except PLEError as e:
            raise PLEError(f"compare cell {cell_label(method, rate, seed)}: {e}") from None
        return Cell(method, rate, seed, config)

    def counterpart(self, cell: Cell, method: str) -> Cell | None:
        """`method`'s cell to judge `cell` against: the same seed and rate, or the same seed when `method` has one
        rate; None when it has no such cell."""
        if method not in self.methods or cell.seed not in self.method_seeds(method):
            return None
        rates = self.rates(method)
        if cell.learning_rate in rates:
            return self.cell(method, cell.learning_rate, cell.seed)
        return self.cell(method, rates[0], cell.seed) if len(rates) == 1 else None


def read_grid_file(path: str | Path) -> dict:
    return read_yaml_file(path, "compare file") or {}


def load_grid(raw: dict, config_overrides: dict | None = None) -> Grid:
    """Check a compare mapping and build the grid; `config_overrides` win over its shared config. Every cell's
    config is built here, so a bad one fails before any work."""
    if not isinstance(raw, dict):
        raise PLEError("a compare file must be a mapping with methods, seeds and config")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise PLEError(
            f"unknown compare key(s): {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(SPEC_KEYS))})"
        )
    methods = _method_list(raw.get("methods"))
    seeds = _seed_list(raw.get("seeds", [0]), "`seeds`")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict) or any(
        m not in methods or not isinstance(v, dict) for m, v in overrides.items()
    ):
        raise PLEError("compare: `overrides` maps a listed method to a mapping of config keys")
    per_method = raw.get("seeds_per_method") or {}
    if not isinstance(per_method, dict) or any(m not in methods for m in per_method):
        raise PLEError("compare: `seeds_per_method` maps a listed method to a non-empty list of integer seeds")
    if not isinstance(raw.get("config") or {}, dict):
        raise PLEError("compare: `config` is a mapping of training config keys (as a `ple train` YAML)")
    output_dir = raw.get("output_dir", "runs/compare")
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise PLEError(f"compare: `output_dir` must name a directory, got {output_dir!r}")
    if "method" in (config_overrides or {}) or "method" in (raw.get("config") or {}):
        raise PLEError("compare: each cell's method comes from `methods`; drop `method` from the shared config")
    config = {**(raw.get("config") or {}), **(config_overrides or {})}
    evaluation = raw.get("evaluation") or {}
    grid = Grid(
        output_dir=Path(output_dir).expanduser(),
        methods=tuple(methods),
        seeds=tuple(seeds),
        base=_evaluation_config(config, evaluation),
        config=config,
        seeds_per_method={m: tuple(_seed_list(v, "`seeds_per_method`")) for m, v in per_method.items()},
        tie_margin=_tie_margin(raw.get("tie_margin", 0.0)),
        reference=_listed(raw.get("reference", "ple"), methods, "reference"),
        baseline=_listed(raw.get("baseline", "sft" if "sft" in methods else None), methods, "baseline"),
        learning_rates=_rate_list(raw.get("learning_rates"), "`learning_rates`"),
        lr_grid=_lr_grid(raw.get("lr_grid")),
        overrides=overrides,
        evaluation=evaluation,
        best_of_n=_best_of_n(raw.get("best_of_n")),
        frontier=_frontier(raw.get("frontier")),
    )
    if grid.baseline is not None and grid.baseline == grid.reference:
        raise PLEError(
            f"compare: baseline and reference are both {grid.reference}; name another baseline, or baseline: null"
        )
    if grid.learning_rates is not None and (grid.lr_grid or any("learning_rate" in o for o in overrides.values())):
        raise PLEError("compare: `learning_rates` gives every method its rates; drop lr_grid and overridden rates")
    if not grid.cells:  # built now, so that a bad cell config fails before any work
        raise PLEError("compare: the grid has no cells")
    return grid


def _evaluation_config(config: dict, evaluation) -> Config:
    """The config every model is evaluated under: the shared config with the `evaluation` sampling keys."""
    if not isinstance(evaluation, dict) or set(evaluation) - EVALUATION_KEYS:
        raise PLEError(f"compare: `evaluation` maps sampling keys ({', '.join(sorted(EVALUATION_KEYS))}) to values")
    base = load_config(overrides={**{k: v for k, v in config.items() if k != "method"}, **evaluation}, validate=False)
    if base.eval_dataset is None:
        raise PLEError("compare: the config needs an eval_dataset (the prompts every model is evaluated on)")
    problems = generation_problems(base)
    if problems:  # before any cell trains, not when the first evaluation starts
        raise PLEError(f"compare: {problems[0]} (the evaluation's sampling settings)")
    return base


def _method_list(methods) -> list[str]:
    if not isinstance(methods, list) or not methods:
        raise PLEError("compare: `methods` must be a non-empty list")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise PLEError(f"compare: unknown method(s) {', '.join(map(str, bad))}; known methods: {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _seed_list(seeds, what: str) -> list[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise PLEError(f"compare: {what} must be a non-empty list of integers (seeds)")
    return list(dict.fromkeys(seeds))


def _number(value) -> float | None:
    """A YAML number, also one PyYAML reads as text (1e-3, which YAML 1.1 only knows as 1.0e-3); None for anything
    else. bool is an int to Python: `[true]` would train at learning rate 1.0."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rate_list(rates, what: str) -> tuple[float, ...] | None:
    if rates is None:
        return None
    numbers = [_number(r) for r in rates] if isinstance(rates, list) else []
    if not numbers or not all(n is not None and 0 < n < float("inf") for n in numbers):
        raise PLEError(f"compare: {what} must be a non-empty list of positive learning rates, got {rates!r}")
    return tuple(dict.fromkeys(numbers))


def _tie_margin(value) -> float:
    number = _number(value)
    if number is None or not 0 <= number < float("inf"):
        raise PLEError(
            f"compare: `tie_margin` must be a number >= 0 (reward differences up to it are ties), got {value!r}"
        )
    return number


def _listed(method: str | None, methods: list[str], key: str) -> str | None:
    if method is not None and method not in methods:
        raise PLEError(f"compare: {key}={method!r} is not one of the grid's methods ({', '.join(methods)})")
    return method


def _best_of_n(values) -> tuple[int, ...]:
    if values is None:
        return ()
    if not isinstance(values, list) or not values or not all(isinstance(n, int) and n >= 1 for n in values):
        raise PLEError("compare: `best_of_n` must be a non-empty list of positive integers (n)")
    return tuple(sorted(set(values)))


def _frontier(rules) -> Mapping[str, Any] | None:
    if rules is None:
        return None
    from ple.evaluation.frontier import rules_from

    rules_from(rules)  # checked now, so that a bad rule fails before any work
    return dict(rules)


def _lr_grid(grid) -> LRGrid | None:
    if grid is None:
        return None
    if not isinstance(grid, dict) or set(grid) - LR_GRID_KEYS or not {"rates", "validation_dataset"} <= set(grid):
        allowed = ", ".join(sorted(LR_GRID_KEYS))
        raise PLEError(f"compare: `lr_grid` is a mapping with rates and validation_dataset (allowed keys: {allowed})")
    for key in ("iterations", "queries_per_iteration", "validation_prompts"):
        if key in grid and (isinstance(grid[key], bool) or not isinstance(grid[key], int) or grid[key] < 1):
            raise PLEError(f"compare: `lr_grid.{key}` must be a positive integer, got {grid[key]!r}")
    if "seed" in grid and (isinstance(grid["seed"], bool) or not isinstance(grid["seed"], int)):
        raise PLEError(f"compare: `lr_grid.seed` must be an integer, got {grid['seed']!r}")
    return LRGrid(**{**grid, "rates": _rate_list(grid["rates"], "`lr_grid.rates`")})


# ---------------------------------------------------------------------------------------------- running


def grid_for_file(grid: Grid) -> dict:
    """The grid as a compare file would state it (compare.yaml)."""
    return {
        "output_dir": str(grid.output_dir),
        "methods": list(grid.methods),
        "seeds": list(grid.seeds),
        "seeds_per_method": {m: list(s) for m, s in grid.seeds_per_method.items()},
        "tie_margin": grid.tie_margin,
        "reference": grid.reference,
        "baseline": grid.baseline,
        "learning_rates": list(grid.learning_rates) if grid.learning_rates else None,
        "lr_grid": dataclasses.asdict(grid.lr_grid) if grid.lr_grid else None,
        "config": dict(grid.config),
        "overrides": {m: dict(o) for m, o in grid.overrides.items()},
        "evaluation": dict(grid.evaluation),
        "best_of_n": list(grid.best_of_n) or None,
        "frontier": dict(grid.frontier) if grid.frontier else None,
    }
