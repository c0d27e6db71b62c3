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

import dataclasses
import gc
import json
import os
import statistics
import time
from pathlib import Path

import yaml

from ple.config import METHOD_PRESETS, Config, load_config
from ple.data import load_rows, query_rows
from ple.errors import PLEError
from ple.evaluation.evaluate import eval_prompts, evaluate_model, judge_reward_name, reward_specs
from ple.evaluation.judges import RewardJudge
from ple.evaluation.pairwise import judge_pair, load_completions
from ple.evaluation.results import write_results
from ple.io import atomic_write_text, strict_json
from ple.model import resolve_device
from ple.progress import Progress, quiet_libraries
from ple.rewards import config_reward
from ple.training.rundir import config_changes

SPEC_KEYS = {"output_dir", "methods", "seeds", "seeds_per_method", "tie_margin", "config", "overrides", "lr_grid"}
LR_GRID_KEYS = {"rates", "iterations", "queries_per_iteration", "validation_dataset", "validation_prompts", "seed"}


def read_grid_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PLEError(f"compare file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PLEError(f"compare file {path} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_grid(raw: dict, config_overrides: dict | None = None) -> dict:
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
    per_method = raw.get("seeds_per_method") or {}
    if not isinstance(per_method, dict) or any(
        m not in methods or not isinstance(v, list) or not v or not all(isinstance(s, int) for s in v)
        for m, v in per_method.items()
    ):
        raise PLEError("compare: `seeds_per_method` maps a listed method to a non-empty list of integer seeds")
    spec = {
        "output_dir": Path(raw.get("output_dir", "runs/compare")),
        "methods": list(dict.fromkeys(methods)),
        "seeds": list(dict.fromkeys(seeds)),
        "seeds_per_method": per_method,
        "tie_margin": float(raw.get("tie_margin", 0.0)),
        "config": {**(raw.get("config") or {}), **(config_overrides or {})},
        "overrides": overrides,
        "lr_grid": _check_lr_grid(raw.get("lr_grid")),
        "learning_rates": {},  # method -> the rate the lr grid chose (filled in by run_grid)
    }
    spec["cells"] = {(m, s): cell_config(spec, m, s) for m in spec["methods"] for s in method_seeds(spec, m)}
    base = load_config(overrides=_without_method(spec["config"]), validate=False)
    if base.eval_dataset is None:
        raise PLEError("compare: the config needs an eval_dataset (the prompts every model is evaluated on)")
    spec["base"] = base
    return spec


def _check_lr_grid(grid) -> dict | None:
    if grid is None:
        return None
    if not isinstance(grid, dict) or set(grid) - LR_GRID_KEYS or not {"rates", "validation_dataset"} <= set(grid):
        allowed = ", ".join(sorted(LR_GRID_KEYS))
        raise PLEError(f"compare: `lr_grid` is a mapping with rates and validation_dataset (allowed keys: {allowed})")
    rates = grid["rates"]
    if not isinstance(rates, list) or not rates or not all(isinstance(r, (int, float)) and r > 0 for r in rates):
        raise PLEError("compare: `lr_grid.rates` must be a non-empty list of positive learning rates")
    return {"iterations": 3, "queries_per_iteration": 16, "validation_prompts": 100, "seed": 0, **grid}


def method_seeds(spec: dict, method: str) -> list[int]:
    return spec["seeds_per_method"].get(method, spec["seeds"])


def _without_method(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "method"}


def cell_config(spec: dict, method: str, seed: int, **changes) -> Config:
    """The training config of one cell: the shared config, the learning rate the lr grid chose, the method's
    overrides, its seed and run directory, then `changes`. Keys a method preset fixes (distill's reward, say) are
    dropped from the shared config for that method."""
    shared = {k: v for k, v in _without_method(spec["config"]).items() if k not in METHOD_PRESETS[method]}
    chosen = spec["learning_rates"].get(method)
    values = {
        **shared,
        **({"learning_rate": chosen} if chosen is not None else {}),
        **spec["overrides"].get(method, {}),
        "method": method,
        "seed": seed,
        "output_dir": str(spec["output_dir"] / "cells" / method / f"seed{seed}"),
        **changes,
    }
    try:
        return load_config(overrides=values)
    except PLEError as e:
        raise PLEError(f"compare cell {method}/seed{seed}: {e}") from None


def run_grid(spec: dict) -> Path:
    """Tune each method's learning rate (when the grid has an lr_grid), train and evaluate every cell, judge the
    pairs, and write the results. Every stage skips what a previous invocation finished."""
    quiet_libraries()  # also when called from Python rather than the CLI: our progress bars are the ones to watch
    out = spec["output_dir"]
    out.mkdir(parents=True, exist_ok=True)
    spec["invocation"] = _Invocation(out)
    base = spec["base"]
    prompts = eval_prompts(base, None)
    judge = _judge(base, spec["tie_margin"])
    atomic_write_text(out / "compare.yaml", yaml.safe_dump(_spec_for_file(spec), sort_keys=False))

    _evaluate_once(base.model, base, prompts, out / "base", "base model")
    if spec["lr_grid"] is not None:
        tune_learning_rates(spec)
    run_cells(spec, prompts)
    for (method, seed), config in spec["cells"].items():  # after every cell, so that each has its counterparts
        cell = Path(config.output_dir)
        _judge_once(cell / "eval", out / "base", judge, cell / "vs_base")
        if "sft" in spec["methods"] and method != "sft" and ("sft", seed) in spec["cells"]:
            _judge_once(cell / "eval", _cell_dir(spec, "sft", seed) / "eval", judge, cell / "vs_sft")
        if "ple" in spec["methods"] and method != "ple" and ("ple", seed) in spec["cells"]:
            _judge_once(_cell_dir(spec, "ple", seed) / "eval", cell / "eval", judge, cell / "vs_ple")
    spec["invocation"].record()
    return write_results(spec)


def _cell_dir(spec: dict, method: str, seed: int) -> Path:
    return Path(spec["cells"][(method, seed)].output_dir)


def _train_and_evaluate(config: Config, prompts: list, out: Path, label: str, evaluation: Config) -> None:
    from ple.baselines import make_trainer

    run_dir = Path(config.output_dir)
    trainer = make_trainer(config)
    final = trainer.train(resume=(run_dir / "config.yaml").is_file()).final_model
    del trainer
    gc.collect()
    _evaluate_once(str(final), evaluation, prompts, out, label, evaluation.model)


def _check_unchanged(config: Config, label: str) -> None:
    """A finished run is not silently reused under a changed config."""
    run_dir = Path(config.output_dir)
    changed = [k for k in config_changes(run_dir / "config.yaml", config) if k != "device"]
    if changed:
        raise PLEError(
            f"compare cell {label} finished with another config ({', '.join(changed)}); "
            f"delete {run_dir} to rerun it, or choose another output_dir"
        )


class _ETA:
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


def tune_learning_rates(spec: dict) -> dict:
    """Each method's learning rate from the grid's rates: a short run (the grid's iterations and queries, one seed)
    at each rate, scored by the held-out judge on validation prompts from the training pool, never on the eval
    prompts. Writes lr_grid.json and sets spec["learning_rates"] and the cells' configs."""
    grid, base, out = spec["lr_grid"], spec["base"], spec["output_dir"]
    source = grid["validation_dataset"]
    validation = query_rows(load_rows(source), source)[: grid["validation_prompts"]]
    evaluation = dataclasses.replace(base, seed=grid["seed"], eval_max_prompts=0)
    key = judge_reward_name(base)
    runs = {
        (m, rate): cell_config(
            spec,
            m,
            grid["seed"],
            learning_rate=rate,
            iterations=grid["iterations"],
            queries_per_iteration=grid["queries_per_iteration"],
            output_dir=str(out / "lr_grid" / m / f"lr_{rate:g}"),
        )
        for m in spec["methods"]
        for rate in grid["rates"]
    }
    eta = _ETA([(m, (Path(c.output_dir) / "eval" / "eval.json").is_file()) for (m, _), c in runs.items()])
    scores: dict[str, dict[str, float]] = {}
    for (method, rate), config in runs.items():
        run_dir = Path(config.output_dir)
        if (run_dir / "eval" / "eval.json").is_file():
            _check_unchanged(config, f"lr_grid/{method}/lr_{rate:g}")
        else:
            started = time.perf_counter()
            _train_and_evaluate(config, validation, run_dir / "eval", f"{method} lr {rate:g}", evaluation)
            eta.done(method, time.perf_counter() - started, f"lr grid: {method} at {rate:g}")
            spec["invocation"].record()
        result = json.loads((run_dir / "eval" / "eval.json").read_text())
        scores.setdefault(method, {})[f"{rate:g}"] = result["metrics"][key]["value"]
    chosen = {m: float(max(rates, key=rates.get)) for m, rates in scores.items()}
    fixed = {m: o["learning_rate"] for m, o in spec["overrides"].items() if "learning_rate" in o}
    atomic_write_text(
        out / "lr_grid.json",
        strict_json(
            {
                "judge": key,
                "validation_dataset": source,
                "validation_prompts": len(validation),
                "iterations": grid["iterations"],
                "queries_per_iteration": grid["queries_per_iteration"],
                "seed": grid["seed"],
                "scores": scores,
                "chosen": chosen,
                "fixed_by_overrides": fixed,
            },
            indent=2,
        ),
    )
    spec["learning_rates"] = chosen
    spec["cells"] = {(m, s): cell_config(spec, m, s) for m, s in spec["cells"]}
    return chosen


def run_cells(spec: dict, prompts: list) -> None:
    base = spec["base"]
    cells = list(spec["cells"].items())
    eta = _ETA([(m, (Path(c.output_dir) / "eval" / "eval.json").is_file()) for (m, _), c in cells])
    for (method, seed), config in cells:
        cell = Path(config.output_dir)
        if (cell / "eval" / "eval.json").is_file():
            _check_unchanged(config, f"{method}/seed{seed}")
            continue
        started = time.perf_counter()
        # Every model is evaluated alike: the shared config's rewards and generation settings, the cell's seed.
        evaluation = dataclasses.replace(base, seed=seed)
        _train_and_evaluate(config, prompts, cell / "eval", f"{method}/seed{seed}", evaluation)
        eta.done(method, time.perf_counter() - started, f"{method} seed {seed}")
        spec["invocation"].record()


class _Invocation:
    """invocations/<start>.json: this invocation's wall time and peak memory, rewritten after every finished run,
    so that a grid run across sessions adds up, killed invocations included (to their last finished run)."""

    def __init__(self, out: Path):
        self.started = time.perf_counter()
        self.path = out / "invocations" / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"

    def record(self) -> None:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        seconds = time.perf_counter() - self.started
        atomic_write_text(self.path, json.dumps({"seconds": seconds, "peak_rss_gb": peak_kb / 2**20}))


def _spec_for_file(spec: dict) -> dict:
    keys = ("methods", "seeds", "seeds_per_method", "tie_margin", "config", "overrides", "lr_grid")
    return {"output_dir": str(spec["output_dir"]), **{k: spec[k] for k in keys}}


def _judge(config: Config, tie_margin: float):
    specs = reward_specs(config)
    name = judge_reward_name(config)
    if name not in specs:
        raise PLEError("compare needs a reward or an eval_rewards entry to judge win rates")
    return RewardJudge(config_reward(specs[name], config, resolve_device(config.device)), tie_margin)


def _evaluate_once(
    model: str, config: Config, prompts: list, out: Path, label: str, reference_model: str | None = None
) -> None:
    """Evaluate `model` into `out` unless a previous invocation did."""
    if (out / "eval.json").is_file():
        return
    with Progress(total=1, description=f"eval {label}") as progress:
        evaluate_model(model, config, prompts, False, out, reference_model, progress)
        progress.advance()


def _judge_once(a: Path, b: Path, judge, out: Path) -> None:
    if (out / "compare.json").is_file():
        return
    judge_pair(
        load_completions(str(a / "completions.jsonl")),
        load_completions(str(b / "completions.jsonl")),
        judge,
        str(a.parent),
        str(b.parent),
        out,
    )
