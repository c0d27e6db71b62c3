"""`ple compare`: a methods x learning rates x seeds grid (ple.evaluation.grid_spec) under one budget, every model
evaluated alike, and the results (ple.evaluation.results) as one long table with views of it.

A cell trains in output_dir/cells/METHOD/lr_RATE/seedS and its model is
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
from pathlib import Path

import yaml

from ple.data import load_rows, query_rows
from ple.errors import PLEError
from ple.evaluation.evaluate import Evaluator, eval_prompts, judge_reward_name
from ple.evaluation.grid_spec import EVALUATION_KEYS, Cell, Grid, grid_for_file
from ple.evaluation.judges import RewardJudge
from ple.evaluation.layout import (
    BASE,
    CELLS,
    COMPARE_JSON,
    COMPLETIONS,
    EVAL_JSON,
    FRONTIER_JSON,
    GRID_DIRS,
    GRID_FILE,
    GRID_MARKER,
    INVOCATIONS,
    LR_GRID,
    LR_GRID_JSON,
    MADE_FROM,
    PROBE_JSON,
    RESULTS_JSON,
    rate_dir,
)
from ple.evaluation.pairwise import judge_pair, load_completions
from ple.evaluation.results import analyse_results
from ple.evaluation.results_views import render_results
from ple.io import atomic_write_text, strict_json
from ple.progress import Progress, quiet_libraries
from ple.training.rundir import (
    config_changes,
    refuse_foreign,
)


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
        evaluate_once(evaluator, cell.model_at(step), prompts, out, f"{cell.label} step {step}", seed)


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
            is_current(out, EVAL_JSON, evaluation_inputs(evaluator, cell.model_at(step), prompts, seed_of, out))
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


def evaluation_inputs(evaluator: Evaluator, model: str | Path, prompts: list, seed: int, out: Path) -> dict:
    """What an evaluation in `out` depends on beyond the model's weights: which model (a local one by its path from
    `out`, so that a grid moved whole keeps its evaluations; a cell's model, given as a Path, so even where its
    weights are not on disk, as in a grid kept in git without them), the settings, rewards, prompts and seed."""
    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    settings = {key: getattr(evaluator.config, key) for key in sorted(EVALUATION_KEYS)}
    local = isinstance(model, Path) or Path(model).exists()
    where = os.path.relpath(Path(model).resolve(), out.resolve()) if local else model
    return {"model": where, "seed": seed, "settings": settings, "rewards": sorted(evaluator.rewards), "prompts": digest}


def evaluate_once(evaluator: Evaluator, model: str | Path, prompts: list, out: Path, label: str, seed: int) -> None:
    """Evaluate `model` (a Path: a cell's own) into `out` unless a previous invocation did, from the same inputs."""

    def make():
        with Progress(total=1, description=f"eval {label}") as progress:
            evaluator.evaluate(str(model), prompts, out, seed, progress)
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
