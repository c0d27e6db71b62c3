"""The run directory: what a run writes, how it resumes, and what keeps it safe.

    output_dir/
      config.yaml, inputs.json      the run's config, and a content hash of each local input file
      metrics.jsonl                 one line per finished iteration
      generations/iter_TTT.jsonl    what the policy generated in iteration t, with rewards and branches
      checkpoints/iter_TTT/         model + optimizer + trainer_state.json (iteration, running reward std)
      snapshots/step_NNN/           the policy after NNN iterations, every snapshot_every (never pruned)
      final/                        the trained model
      budget.json                   what the run spent: policy samples, reward calls, tokens, seconds

Every file is written to a temporary name and renamed, so a kill never leaves a torn one.

Safety: one run at a time, never into someone else's files, and a resume only of what is unchanged.

- A run holds an exclusive lock on `output_dir/.lock` for its whole life (an OS lock: a killed run's lock goes
  with its process, so a stale lock file never blocks the next run; the pid in it names the holder).
- A run writes only into a missing or empty directory, or into one that holds a ple run (the `.ple-run` marker it
  writes first). It deletes only what it wrote: checkpoints named iter_NNN or warmup, generations/iter_NNN.jsonl.
- `inputs.json` records a content hash of each local input file, and a resume refuses one whose data changed.
"""

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import yaml

from ple.config import Config, save_config
from ple.config_values import RENAMED_KEYS
from ple.errors import PLEError, first_line
from ple.io import atomic_write_jsonl, atomic_write_text, read_jsonl, replace_dir, same_path, strict_json, temporary

# The run directory's files: every module names them through these.
LOCK = ".lock"
INPUTS = "inputs.json"
CONFIG = "config.yaml"
METRICS_JSONL = "metrics.jsonl"
TRL_LOG = "trl_log.jsonl"  # TRL's logging steps of a dpo, rloo or grpo run (metrics.jsonl: one row per iteration)
BUDGET = "budget.json"
FINAL = "final"
GENERATIONS = "generations"
CHECKPOINTS = "checkpoints"
SNAPSHOTS = "snapshots"
EVALS = "evals"  # the evaluations during training (config.eval_steps)
TRAINER_STATE = "trainer_state.json"
MARKER = ".ple-run"  # written first into a new run directory: what tells a ple run from a user's folder
INPUT_FIELDS = ("dataset", "sft_dataset", "eval_dataset", "principle")


def lock_run_dir(run_dir: Path):
    """Create `run_dir` if needed and lock it for this process; the returned file keeps the lock until closed."""
    refuse_foreign(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / MARKER).is_file():
            atomic_write_text(run_dir / MARKER, "a ple run directory: ple may replace and prune what it wrote here\n")
        handle = open(run_dir / LOCK, "a+", encoding="utf-8")
    except OSError as e:
        raise PLEError(f"cannot write to output_dir {run_dir}: {e.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise PLEError(
            f"output_dir {run_dir} is in use by another run (pid {holder}); wait for it, or choose another output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def refuse_foreign(run_dir: Path, holds=None, what: str = "ple run") -> None:
    """One line unless `run_dir` is missing, empty, or holds what ple writes there (`holds(run_dir)`, by default a ple
    run): ple never writes into a user's folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise PLEError(f"output_dir {run_dir} is a file, not a directory")
    if run_dir.is_dir() and not (holds or holds_ple_run)(run_dir):
        # Another process of the same launch may be writing the marker right now: its temporary name, or the marker
        # itself when the rename lands between the check above and this listing.
        ours = {LOCK, MARKER, temporary(run_dir / MARKER).name}
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in ours)
        if foreign:
            raise PLEError(
                f"output_dir {run_dir} is not empty and holds no {what} ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
            )


def holds_ple_run(run_dir: Path) -> bool:
    """Whether `run_dir` is a ple run: it has the marker ple writes first, or (a run from before the marker) a
    config.yaml that is a ple config beside the inputs.json ple writes with it. A user's folder that merely holds a
    file named config.yaml is not one."""
    if (run_dir / MARKER).is_file():
        return True
    if not ((run_dir / CONFIG).is_file() and (run_dir / INPUTS).is_file()):
        return False
    try:
        saved = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    known = set(Config().to_dict()) | set(RENAMED_KEYS)
    return isinstance(saved, dict) and {"method", "output_dir", "model"} <= set(saved) <= known


def local_file(value) -> Path | None:
    """The file a config value names, or None: not a string, no such file, or text no file could be named by (an
    inline principle longer than the system's longest file name)."""
    if not isinstance(value, str):
        return None
    try:
        path = Path(value).expanduser()
        return path if path.is_file() else None
    except OSError:  # ENAMETOOLONG
        return None


def input_hashes(config) -> dict[str, dict[str, str]]:
    """{field: {path, sha256}} for each config field that names a local file."""
    from ple.rewards import reward_code_files

    hashes = {}
    for field in INPUT_FIELDS:
        path = local_file(getattr(config, field))
        if path is not None:
            hashes[field] = {"path": str(path.resolve()), "sha256": _sha256(path)}
    for spec_field in ("reward", "eval_rewards"):
        for name, path in reward_code_files(getattr(config, spec_field)).items():
            hashes[f"{spec_field} {name}"] = {"path": str(path.resolve()), "sha256": _sha256(path)}
    return hashes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_input_hashes(run_dir: Path, config) -> None:
    atomic_write_text(run_dir / INPUTS, json.dumps(input_hashes(config), indent=2))


def check_inputs_unchanged(run_dir: Path, config) -> None:
    """Refuse to resume a run whose local input files changed since it started (runs that predate inputs.json
    are not checked)."""
    path = run_dir / INPUTS
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    now = input_hashes(config)
    for field, saved in before.items():
        if field in now and now[field]["sha256"] != saved["sha256"]:
            raise PLEError(
                f"cannot resume {run_dir}: {field} file {now[field]['path']} changed since the run started; "
                "start a new run (another output_dir) to train on the new data or code"
            )


WARMUP = -1  # iteration index of the SFT warm-up checkpoint
CHECKPOINT_DIR = re.compile(r"iter_(\d{3,})|warmup")
GENERATION_FILE = re.compile(r"iter_(\d{3,})\.jsonl")
PATH_FIELDS = ("model", "dataset", "sft_dataset", "eval_dataset", "principle", "output_dir")
BUDGET_KEYS = ("samples", "reward_calls", "gen_tokens", "seconds")
RESUMABLE_CHANGES = ("iterations", "device", "output_dir")  # output_dir: the run may have been moved or renamed


class RunDir:
    """One run's directory. Only the main process writes; the others read what they need to resume."""

    def __init__(self, path: Path, main: bool = True):
        self.path = Path(path)
        self.main = main
        self._lock = None

    # -------------------------------------------------------------- start or resume
    def open(self, config, resume: bool) -> list[tuple[int, Path]]:
        """Lock the directory and check that this run may start (or continue) in it; the finished checkpoints,
        oldest first. A run with a finished checkpoint continues only with `resume` and an unchanged config and
        data; one that failed before its first checkpoint restarts, with the config given now."""
        refuse_foreign(self.path)
        if resume and not (self.path / CONFIG).is_file():
            raise PLEError(f"nothing to resume in {self.path}: it holds no ple run; drop --resume to start one")
        if self.main:
            self._lock = lock_run_dir(self.path)
        saved = self.path / CONFIG
        finished = self.checkpoints() if saved.is_file() else []
        if (finished or (self.path / BUDGET).is_file()) and not resume:
            raise PLEError(
                f"{self.path} already holds a run; pass --resume (train(resume=True) from Python) to continue it, "
                "or choose another output_dir"
            )
        if finished:
            self._check_resumable(config, finished[-1][0])
        return finished

    def start(self, config, done: int) -> None:
        """Record the config and inputs, and drop what iterations after `done` (the last checkpoint) wrote."""
        if not self.main:
            return
        save_config(config, self.path / CONFIG)
        write_input_hashes(self.path, config)
        self._drop_after(done)
        for path in (self.path / GENERATIONS).glob("iter_*.jsonl"):
            match = GENERATION_FILE.fullmatch(path.name)  # exactly what write_iteration writes, never a user's file
            if match and int(match[1]) > done:
                path.unlink()

    def _drop_after(self, done: int) -> None:
        """Keep the metrics rows of the iterations up to `done` (those after it are redone alike); refuse a resume
        whose checkpoint covers an iteration metrics.jsonl has lost, since budget.json is summed from it."""
        metrics = self.path / METRICS_JSONL
        rows = read_jsonl(metrics) if metrics.exists() else []
        if done < 0:  # nothing checkpointed: every row is redone (a TRL run's log rows too)
            kept = []
        else:
            bad = next((i for i, r in enumerate(rows) if not isinstance(r.get("iteration"), int)), None)
            if bad is not None:
                raise PLEError(f"cannot resume {self.path}: {METRICS_JSONL} row {bad + 1} has no iteration number")
            kept = [r for r in rows if r["iteration"] <= done]
            missing = sorted(set(range(done + 1)) - {r["iteration"] for r in kept})
            if missing:
                raise PLEError(
                    f"cannot resume {self.path}: {METRICS_JSONL} has no row for iteration(s) "
                    f"{', '.join(map(str, missing))}, which its checkpoint covers; restore the file or start a new run"
                )
        if metrics.exists():
            atomic_write_jsonl(metrics, kept)

    def close(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    def _check_resumable(self, config, last: int) -> None:
        changed = [k for k in config_changes(self.path / CONFIG, config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise PLEError(
                f"cannot resume {self.path}: the config changed ({', '.join(changed)}); only iterations and device may"
            )
        if config.iterations < last + 1:
            raise PLEError(f"cannot resume {self.path} with iterations={config.iterations}: it has finished {last + 1}")
        check_inputs_unchanged(self.path, config)

    # -------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Finished checkpoints as (iteration, dir), oldest first; half-written ones have no trainer_state.json."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        found = []
        for d in root.iterdir():  # only the names ple writes: a user's copy (best/) or another tool's is left alone
            match = CHECKPOINT_DIR.fullmatch(d.name)
            if match and d.is_dir() and (d / TRAINER_STATE).is_file():
                found.append((WARMUP if match[0] == "warmup" else int(match[1]), d))
        return sorted(found)

    def load_newest(self, finished: list[tuple[int, Path]], load) -> int | None:
        """The iteration of the newest checkpoint that `load(dir, trainer state)` reads without error; None when
        there is none. An unreadable one (a torn file, from a full disk or a bad copy) gives way to the one
        before it."""
        for t, checkpoint in reversed(finished):
            try:
                state = json.loads((checkpoint / TRAINER_STATE).read_text())  # a torn one: the one before it
                if state.get("iteration") != t:
                    raise PLEError(
                        f"checkpoint {checkpoint} says iteration {state.get('iteration')!r} in {TRAINER_STATE}, not "
                        f"{t} as its name does; restore it, or start a new run"
                    )
                load(checkpoint, state)
            except PLEError:
                raise
            except Exception as e:
                print(f"ple: warning: checkpoint {checkpoint} is unreadable ({first_line(e)})", file=sys.stderr)
                continue
            return t
        if finished:
            raise PLEError(f"no checkpoint in {self.path / 'checkpoints'} could be read; start a new run")
        return None

    def new_checkpoint(self, t: int) -> Path:
        """The hidden directory checkpoint t is written into, emptied; `commit_checkpoint` makes it visible."""
        tmp = temporary(self.path / CHECKPOINTS / checkpoint_name(t))
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, t: int, state: dict, keep: int) -> None:
        atomic_write_text(tmp / TRAINER_STATE, json.dumps({"iteration": t, **state}))
        replace_dir(tmp, self.path / CHECKPOINTS / checkpoint_name(t))
        if keep:
            for _, old in self.checkpoints()[:-keep]:
                shutil.rmtree(old)

    # -------------------------------------------------------------- results
    def write_iteration(self, t: int, rows: list[dict] | None, metrics: dict) -> None:
        """Iteration t's generation rows (None: a whole run's library kept them) and its metrics row."""
        if self.main:
            if rows is not None:
                atomic_write_jsonl(self.path / GENERATIONS / f"iter_{t:03d}.jsonl", rows)
            with open(self.path / METRICS_JSONL, "a", encoding="utf-8") as f:
                f.write(strict_json(metrics) + "\n")

    def metrics(self) -> list[dict]:
        path = self.path / METRICS_JSONL
        return read_jsonl(path) if path.is_file() else []

    def write_budget(self, extra: dict | None = None) -> dict[str, float]:
        """budget.json: what the run spent, summed over metrics.jsonl (so a resumed run counts every iteration
        once): policy samples drawn, completions scored by the training reward, tokens generated, wall time."""
        rows = self.metrics()
        budget = {key: sum(r.get(key) or 0 for r in rows) for key in BUDGET_KEYS}
        budget.update(extra or {})
        atomic_write_text(self.path / BUDGET, strict_json(budget, indent=2))
        return budget


def config_changes(saved: Path, config) -> list[str]:
    """The fields of `config` that differ from the config.yaml a run directory holds (a field the saved file
    lacks, from an older version, counts as its default). An input file now at another path but with the
    content hash inputs.json recorded is the same setting: a package's preset file after a reinstall elsewhere.
    dtype auto is the same setting as the dtype it resolves to on the config's device, which the run recorded."""
    saved_values = yaml.safe_load(saved.read_text())
    for old, (new, _) in RENAMED_KEYS.items():  # a run from before a rename
        if old in saved_values:
            saved_values.setdefault(new, saved_values.pop(old))
    before = {**Config().to_dict(), **saved_values}
    recorded = saved.parent / INPUTS
    hashes = json.loads(recorded.read_text()) if recorded.is_file() else {}

    def same_input(key: str, value) -> bool:
        path = local_file(value)
        return key in hashes and path is not None and _sha256(path) == hashes[key]["sha256"]

    values = config.to_dict()
    if "auto" in (values["dtype"], before["dtype"]):
        from ple.model import resolve_device, resolve_dtype

        device = resolve_device(config.device)
        values["dtype"], before["dtype"] = (resolve_dtype(d, device) for d in (values["dtype"], before["dtype"]))
    return [k for k, v in values.items() if not (_same_setting(k, before.get(k), v) or same_input(k, v))]


def _same_setting(key: str, a, b) -> bool:
    """Equal values, or two spellings of one path (runs/ref/ and runs/ref)."""
    if a == b:
        return True
    return key in PATH_FIELDS and same_path(a, b)


def step_name(done: int) -> str:
    """The folder name of what belongs to the policy after `done` iterations: step_NNN."""
    return f"step_{done:03d}"


def snapshot_dir(run_dir: Path, done: int) -> Path:
    """Where the policy after `done` iterations is kept (config.snapshot_every)."""
    return run_dir / SNAPSHOTS / step_name(done)


def snapshot_steps(config) -> list[int]:
    """The iteration counts a run snapshots its policy at: every snapshot_every, up to its iterations."""
    every = config.snapshot_every
    return list(range(every, config.iterations + 1, every)) if every > 0 else []


def eval_steps(config) -> list[int]:
    """The iteration counts after which a run evaluates its policy: every eval_steps, and after the last."""
    every = config.eval_steps
    return sorted({*range(every, config.iterations + 1, every), config.iterations}) if every > 0 else []


def eval_dir(run_dir: Path, done: int) -> Path:
    """Where the evaluation after `done` iterations is written (config.eval_steps)."""
    return run_dir / EVALS / step_name(done)


def checkpoint_name(t: int) -> str:
    return "warmup" if t == WARMUP else f"iter_{t:03d}"
