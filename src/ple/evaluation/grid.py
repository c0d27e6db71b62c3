"""`ple compare`: a methods x learning rates x seeds grid under one budget, every model evaluated alike, and the
results (ple.evaluation.results) as one long table with views of it.

A compare file is YAML:

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

A cell is one (method, learning rate, seed); it trains in output_dir/cells/METHOD/lr_RATE/seedS and its model is
evaluated in eval/step_NNN (NNN: iterations done) after its last iteration and, when the config sets snapshot_every,
at each of its snapshots too. An evaluation or a judging is kept across reruns while what it was made from
(made_from.json: the model, the evaluation settings, rewards, prompts and seed; the two answer files and the judge
settings) is unchanged, and redone when it changed; a killed cell resumes its training. The base model is
evaluated once, in output_dir/base. The evaluator (the tokenizer, the rewards, the base model) is loaded once for
the whole grid. Pairwise win rates use the reward judge of `judge_reward_name`: the first held-out reward when
there is one, the training reward otherwise, as `ple eval --compare --judge reward` does.
"""

import dataclasses
import gc
import hashlib
import json
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ple.config import Config, generation_problems, load_config
from ple.data import load_rows, query_rows
from ple.errors import PLEError
from ple.evaluation.evaluate import COMPLETIONS, EVAL_JSON, Evaluator, eval_prompts, judge_reward_name
from ple.evaluation.judges import RewardJudge
from ple.evaluation.layout import (
    BASE,
    BASE_DRAWS,
    CELLS,
    FRONTIER_JSON,
    GRID_DIRS,
    GRID_FILE,
    GRID_MARKER,
    INVOCATIONS,
    LR_GRID,
    LR_GRID_JSON,
    PROBE_JSON,
    RESULTS_JSON,
    cell_label,
    rate_dir,
)
from ple.evaluation.pairwise import COMPARE_JSON, judge_pair, load_completions
from ple.evaluation.results import analyse_results
from ple.evaluation.results_views import render_results
from ple.io import atomic_write_text, read_yaml_file, strict_json
from ple.methods import METHODS, get_method
from ple.progress import Progress, quiet_libraries
from ple.training.rundir import (
    BUDGET,
    CONFIG,
    FINAL,
    config_changes,
    refuse_foreign,
    snapshot_dir,
    snapshot_steps,
)

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
        return self.root / "eval" / f"step_{step:03d}"

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
    if not isinstance(evaluation, dict) or set(evaluation) - EVALUATION_KEYS:
        raise PLEError(f"compare: `evaluation` maps sampling keys ({', '.join(sorted(EVALUATION_KEYS))}) to values")
    base = load_config(overrides={**{k: v for k, v in config.items() if k != "method"}, **evaluation}, validate=False)
    if base.eval_dataset is None:
        raise PLEError("compare: the config needs an eval_dataset (the prompts every model is evaluated on)")
    problems = generation_problems(base)
    if problems:  # before any cell trains, not when the first evaluation starts
        raise PLEError(f"compare: {problems[0]} (the evaluation's sampling settings)")
    grid = Grid(
        output_dir=Path(output_dir).expanduser(),
        methods=tuple(methods),
        seeds=tuple(seeds),
        base=base,
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
def run_grid(grid: Grid) -> Path:
    """Tune each method's learning rate (when the grid has an lr_grid), train and evaluate every cell, judge the
    pairs, and write the results. Every stage skips what a previous invocation finished."""
    quiet_libraries()  # also when called from Python rather than the CLI: our progress bars are the ones to watch
    claim_grid_dir(grid.output_dir)
    invocation = Invocation(grid.output_dir)
    prompts = eval_prompts(grid.base, None)
    evaluator = Evaluator(grid.base)
    atomic_write_text(grid.output_dir / GRID_FILE, yaml.safe_dump(grid_for_file(grid), sort_keys=False))

    evaluate_once(evaluator, grid.base.model, prompts, grid.base_dir, "base model", grid.base.seed)
    for i in range(1, max(grid.best_of_n, default=1)):
        out, seed = grid.base_draw(i)
        evaluate_once(evaluator, grid.base.model, prompts, out, f"base model draw {i + 1}", seed)
    if grid.lr_grid is not None:
        grid = dataclasses.replace(grid, chosen_rates=tune_learning_rates(grid, evaluator, invocation))
    run_cells(grid, evaluator, prompts, invocation)
    judge_cells(grid, evaluator)
    if grid.frontier is not None:
        analyse_frontier(grid, evaluator.rewards[judge_reward_name(grid.base)])
    invocation.record()
    atomic_write_text(grid.output_dir / RESULTS_JSON, strict_json(analyse_results(grid), indent=1))
    return render_results(grid.output_dir)


def analyse_frontier(grid: Grid, judge) -> None:
    """The judge probe (probe.json), then the frontier's analysis (frontier.json), which reports the probe."""
    from ple.evaluation import frontier

    record = frontier.probe(grid, judge)
    if record is not None:
        atomic_write_text(grid.output_dir / PROBE_JSON, strict_json(record, indent=2))
    result = frontier.analyse(grid, frontier.rules_from(grid.frontier))
    if result is not None:
        atomic_write_text(grid.output_dir / FRONTIER_JSON, strict_json(result, indent=2))


def judge_cells(grid: Grid, evaluator: Evaluator) -> None:
    """Every cell against the base model, the baseline and the reference method, in both orders, after every cell
    has trained (so that each has its counterparts)."""
    name = judge_reward_name(grid.base)
    judge = RewardJudge(evaluator.rewards[name], grid.tie_margin)
    settings = {"judge": name, "tie_margin": grid.tie_margin}
    cells = grid.cells
    with Progress(total=len(cells), description="judging pairs") as progress:
        for cell in cells:
            final = cell.paths.eval(cell.final_step)
            judge_once(final, grid.base_dir, judge, cell.paths.vs("base"), settings)
            other = grid.counterpart(cell, grid.baseline) if grid.baseline and cell.method != grid.baseline else None
            if other is not None:
                judge_once(final, other.paths.eval(other.final_step), judge, cell.paths.vs(grid.baseline), settings)
            ref = grid.counterpart(cell, grid.reference) if cell.method != grid.reference else None
            if ref is not None:  # A is the reference method
                judge_once(ref.paths.eval(ref.final_step), final, judge, cell.paths.vs(grid.reference), settings)
            progress.advance()


def train_and_evaluate(cell: Cell, evaluator: Evaluator, prompts: list, outs: dict[int, Path], seed: int) -> None:
    """Train the cell (or resume it), then evaluate its model at each step of `outs` (step -> directory)."""
    from ple.baselines import make_trainer

    trainer = make_trainer(cell.config)
    trainer.train(resume=cell.paths.config.is_file())
    del trainer
    gc.collect()
    for step, out in outs.items():
        evaluate_once(evaluator, str(cell.model_at(step)), prompts, out, f"{cell.label} step {step}", seed)


def check_unchanged(cell: Cell, resumable: tuple[str, ...] = ()) -> None:
    """A finished run is not silently reused under a changed config (but for `resumable` keys, which training
    continues under)."""
    moved = ("device", "output_dir")  # a grid moved whole keeps its cells
    changed = [k for k in config_changes(cell.paths.config, cell.config) if k not in (*moved, *resumable)]
    if changed:
        raise PLEError(
            f"compare cell {cell.label} finished with another config ({', '.join(changed)}); "
            f"delete {cell.paths.root} to rerun it, or choose another output_dir"
        )


def tune_learning_rates(grid: Grid, evaluator: Evaluator, invocation: "Invocation") -> dict[str, float]:
    """Each method's learning rate from the lr grid's rates: a short run (its iterations and queries, one seed) at
    each rate, scored by the held-out judge on validation prompts from the training pool, never on the eval
    prompts. Writes lr_grid.json; returns method -> chosen rate."""
    lr, out = grid.lr_grid, grid.output_dir
    validation = query_rows(load_rows(lr.validation_dataset), lr.validation_dataset)[: lr.validation_prompts]
    key = judge_reward_name(grid.base)
    runs = [
        grid.cell(
            m,
            rate,
            lr.seed,
            out / LR_GRID / m / rate_dir(rate),
            iterations=lr.iterations,
            queries_per_iteration=lr.queries_per_iteration,
        )
        for m in grid.methods
        for rate in lr.rates
    ]
    scores: dict[str, dict[str, float]] = {}
    final_only = lambda c: {c.final_step: c.paths.root / "eval"}  # noqa: E731
    for cell in run_each(runs, final_only, "lr grid", invocation, evaluator, validation, lr.seed):
        result = json.loads((cell.paths.root / "eval" / EVAL_JSON).read_text())
        scores.setdefault(cell.method, {})[f"{cell.learning_rate:g}"] = result["metrics"][key]["value"]
    chosen = {m: float(max(rates, key=rates.get)) for m, rates in scores.items()}
    record = {
        "judge": key,
        "validation_dataset": lr.validation_dataset,
        "validation_prompts": len(validation),
        "iterations": lr.iterations,
        "queries_per_iteration": lr.queries_per_iteration,
        "seed": lr.seed,
        "scores": scores,
        "chosen": chosen,
        "fixed_by_overrides": {m: o["learning_rate"] for m, o in grid.overrides.items() if "learning_rate" in o},
    }
    atomic_write_text(out / LR_GRID_JSON, strict_json(record, indent=2))
    return chosen


def run_cells(grid: Grid, evaluator: Evaluator, prompts: list, invocation: "Invocation") -> None:
    """Every cell trained and its final model evaluated alike: the shared config's rewards and generation
    settings, the cell's seed."""
    every_step = lambda c: {step: c.paths.eval(step) for step in c.steps}  # noqa: E731
    list(run_each(grid.cells, every_step, "cell", invocation, evaluator, prompts))


def run_each(cells, eval_dirs, what: str, invocation: "Invocation", evaluator: Evaluator, prompts: list, seed=None):
    """Train and evaluate each cell not finished before (a trained one must have an unchanged config), with an
    ETA over them; yields every cell once it is done. `eval_dirs(cell)` maps each step to evaluate to its
    directory."""

    def finished(cell) -> bool:
        seed_of = cell.seed if seed is None else seed
        return all(
            is_current(out, EVAL_JSON, evaluation_inputs(evaluator, str(cell.model_at(step)), prompts, seed_of, out))
            for step, out in eval_dirs(cell).items()
        )

    done_before = [finished(c) for c in cells]  # each is_current hashes its inputs: once per cell
    eta = ETA([(c.method, done) for c, done in zip(cells, done_before)])
    for cell, done in zip(cells, done_before):
        if done:
            check_unchanged(cell)
        else:
            if cell.paths.budget.is_file():  # trained, to be evaluated again or trained on: a clear line, not rundir's
                check_unchanged(cell, resumable=("iterations",))
            started = time.perf_counter()
            train_and_evaluate(cell, evaluator, prompts, eval_dirs(cell), cell.seed if seed is None else seed)
            eta.done(cell.method, time.perf_counter() - started, f"{what} {cell.label}")
            invocation.trained.append(f"{what} {cell.label}")
            invocation.record()
        yield cell


class ETA:
    """Minutes left: each remaining job at the mean time of the finished jobs of its kind (else of all of them)."""

    def __init__(self, jobs: list[tuple[str, bool]]):
        self.left = [kind for kind, done in jobs if not done]
        self.total, self.times = len(jobs), {}
        self.started = time.perf_counter()

    def done(self, kind: str, seconds: float, what: str) -> None:
        self.left.remove(kind)
        self.times.setdefault(kind, []).append(seconds)
        overall = statistics.fmean(t for ts in self.times.values() for t in ts)
        eta = sum(statistics.fmean(self.times[k]) if k in self.times else overall for k in self.left)
        elapsed = time.perf_counter() - self.started
        print(
            f"[{self.total - len(self.left)}/{self.total}] {what} done in {seconds / 60:.1f} min; "
            f"{elapsed / 60:.0f} min in this run, ETA {eta / 60:.0f} min",
            flush=True,
        )


def holds_grid(out: Path) -> bool:
    """Whether `out` is a ple compare grid: the marker it writes first, or (a grid from before the marker)
    compare.yaml beside what it ran (invocations/, base/ or cells/)."""
    if (out / GRID_MARKER).is_file():
        return True
    return (out / GRID_FILE).is_file() and any((out / d).is_dir() for d in (INVOCATIONS, BASE, CELLS))


def claim_grid_dir(out: Path) -> None:
    """Create `out` for a grid, or reuse it when it is one; one line for a user's folder, whose results.md or
    cells.csv the grid would overwrite."""
    refuse_foreign(out, holds_grid, "ple compare grid")
    for name in GRID_DIRS:
        if (out / name).exists() and not (out / name).is_dir():
            raise PLEError(f"compare: {out / name} is a file where the grid keeps a folder; move it away and rerun")
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / GRID_MARKER).is_file():
            atomic_write_text(out / GRID_MARKER, "a ple compare grid: ple may replace what it wrote here\n")
    except OSError as e:
        raise PLEError(f"compare: cannot write to output_dir {out}: {e.strerror}") from None


class Invocation:
    """invocations/<start>.json: this invocation's wall time, peak memory and the runs it trained ("cell
    ple/lr_0.0001/seed0", "lr grid ..."), rewritten after every finished run, so that a grid run across sessions
    adds up, killed invocations included (to their last finished run), and a report can tell which cells joined
    the grid after its first invocation."""

    def __init__(self, out: Path):
        self.started = time.perf_counter()
        self.path = out / INVOCATIONS / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
        self.trained: list[str] = []

    def record(self) -> None:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        seconds = time.perf_counter() - self.started
        record = {"seconds": seconds, "peak_rss_gb": peak_kb / 2**20, "trained": self.trained}
        atomic_write_text(self.path, json.dumps(record))


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


MADE_FROM = "made_from.json"  # beside an evaluation or a judging: what it was made from


def is_current(out: Path, result: str, made_from: dict) -> bool:
    """Whether `out` holds `result` made from `made_from`, so that a rerun under changed settings, prompts, model
    or judge redoes it. A result from before these records were written counts as current."""
    record = out / MADE_FROM
    if not (out / result).is_file():
        return False
    try:  # a result damaged since it was written (ple writes whole files) is redone
        json.loads((out / result).read_text(encoding="utf-8"))
        held = json.loads(record.read_text()) if record.is_file() else None
    except json.JSONDecodeError:
        return False
    return held is None or held == json.loads(json.dumps(made_from))


def make_once(out: Path, result: str, made_from: dict, make) -> None:
    """`make()` writes `result` into `out` unless it is current; a stale one is removed first, so that a kill
    midway never leaves it beside a record it was not made from."""
    if is_current(out, result, made_from):
        return
    for stale in (out / MADE_FROM, out / result):
        stale.unlink(missing_ok=True)
    make()
    atomic_write_text(out / MADE_FROM, json.dumps(made_from, indent=1))


def evaluation_inputs(evaluator: Evaluator, model: str, prompts: list, seed: int, out: Path) -> dict:
    """What an evaluation in `out` depends on beyond the model's weights: which model (a local one by its path from
    `out`, so that a grid moved whole keeps its evaluations), the settings, rewards, prompts and seed."""
    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    settings = {key: getattr(evaluator.config, key) for key in sorted(EVALUATION_KEYS)}
    where = os.path.relpath(Path(model).resolve(), out.resolve()) if Path(model).exists() else model
    return {"model": where, "seed": seed, "settings": settings, "rewards": sorted(evaluator.rewards), "prompts": digest}


def evaluate_once(evaluator: Evaluator, model: str, prompts: list, out: Path, label: str, seed: int) -> None:
    """Evaluate `model` into `out` unless a previous invocation did, from the same inputs."""

    def make():
        with Progress(total=1, description=f"eval {label}") as progress:
            evaluator.evaluate(model, prompts, out, seed, progress)
            progress.advance()

    make_once(out, EVAL_JSON, evaluation_inputs(evaluator, model, prompts, seed, out), make)


def judge_once(a: Path, b: Path, judge, out: Path, judge_settings: dict) -> None:
    """Judge A's completions against B's into `out` unless a previous invocation did, from the same answers and
    judge settings."""
    answers = {side: _sha256(d / COMPLETIONS) for side, d in (("a", a), ("b", b))}

    def make():  # the answer files are parsed only when the judging is redone
        sides = [load_completions(str(d / COMPLETIONS)) for d in (a, b)]
        judge_pair(*sides, judge, str(a), str(b), out)

    make_once(out, COMPARE_JSON, {**answers, **judge_settings}, make)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
