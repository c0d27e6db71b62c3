"""The run directory: what a run writes, how it resumes, and what keeps it safe.

    output_dir/
      config.yaml, inputs.json      the run's config, and a content hash of each local input file
      metrics.jsonl                 one line per finished iteration
      generations/iter_TTT.jsonl    what the policy generated in iteration t, with rewards and branches
      checkpoints/iter_TTT/         model + optimizer + trainer_state.json (iteration, running reward std)
      final/                        the trained model
      budget.json                   what the run spent: policy samples, reward calls, tokens, seconds

Every file is written to a temporary name and renamed, so a kill never leaves a torn one.

Safety: one run at a time, never into someone else's files, and a resume only of what is unchanged.

- A run holds an exclusive lock on `output_dir/.lock` for its whole life (an OS lock: a killed run's lock goes
  with its process, so a stale lock file never blocks the next run; the pid in it names the holder).
- A run writes only into a missing or empty directory, or into one that holds a ple run (its config.yaml).
- `inputs.json` records a content hash of each local input file, and a resume refuses one whose data changed.
"""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from ple.config import Config, save_config
from ple.errors import PLEError, first_line
from ple.io import atomic_write_jsonl, atomic_write_text, read_jsonl, replace_dir, strict_json

LOCK = ".lock"
INPUTS = "inputs.json"
INPUT_FIELDS = ("dataset", "sft_dataset", "eval_dataset", "principle")


def lock_run_dir(run_dir: Path):
    """Create `run_dir` if needed and lock it for this process; the returned file keeps the lock until closed."""
    if run_dir.exists() and not run_dir.is_dir():
        raise PLEError(f"output_dir {run_dir} is a file, not a directory")
    if run_dir.is_dir() and not (run_dir / "config.yaml").is_file():
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
        if foreign:
            raise PLEError(
                f"output_dir {run_dir} is not empty and holds no ple run ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
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


def input_hashes(config) -> dict[str, dict[str, str]]:
    """{field: {path, sha256}} for each config field that names a local file."""
    hashes = {}
    for field in INPUT_FIELDS:
        value = getattr(config, field)
        if isinstance(value, str) and Path(value).expanduser().is_file():
            path = Path(value).expanduser().resolve()
            hashes[field] = {"path": str(path), "sha256": _sha256(path)}
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
                "start a new run (another output_dir) to train on the new data"
            )


WARMUP = -1  # iteration index of the SFT warm-up checkpoint
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
        if self.main:
            self._lock = lock_run_dir(self.path)
        saved = self.path / "config.yaml"
        finished = self.checkpoints() if saved.is_file() else []
        if (finished or (self.path / "budget.json").is_file()) and not resume:
            raise PLEError(
                f"{self.path} already holds a run; pass --resume to continue it, or choose another output_dir"
            )
        if finished:
            self._check_resumable(config, finished[-1][0])
        return finished

    def start(self, config, done: int) -> None:
        """Record the config and inputs, and drop what iterations after `done` (the last checkpoint) wrote."""
        if not self.main:
            return
        save_config(config, self.path / "config.yaml")
        write_input_hashes(self.path, config)
        metrics = self.path / "metrics.jsonl"
        if metrics.exists():  # rows of iterations that finished after the last checkpoint: they are redone alike
            atomic_write_jsonl(metrics, [r for r in read_jsonl(metrics) if r["iteration"] <= done])
        for path in (self.path / "generations").glob("iter_*.jsonl"):
            if int(path.stem.split("_")[1]) > done:
                path.unlink()

    def close(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    def _check_resumable(self, config, last: int) -> None:
        changed = [k for k in config_changes(self.path / "config.yaml", config) if k not in RESUMABLE_CHANGES]
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
        root = self.path / "checkpoints"
        if not root.is_dir():
            return []
        found = [
            (int(read_json(d / "trainer_state.json")["iteration"]), d)
            for d in root.glob("[!.]*")
            if (d / "trainer_state.json").is_file()
        ]
        return sorted(found)

    def load_newest(self, finished: list[tuple[int, Path]], load) -> tuple[int, dict] | None:
        """(iteration, trainer state) of the newest checkpoint that `load(dir)` reads without error; None when
        there is none. An unreadable one (a torn file, from a full disk or a bad copy) gives way to the one
        before it."""
        for t, checkpoint in reversed(finished):
            try:
                state = read_json(checkpoint / "trainer_state.json")
                load(checkpoint)
            except PLEError:
                raise
            except Exception as e:
                print(f"ple: warning: checkpoint {checkpoint} is unreadable ({first_line(e)})", file=sys.stderr)
                continue
            return t, state
        if finished:
            raise PLEError(f"no checkpoint in {self.path / 'checkpoints'} could be read; start a new run")
        return None

    def new_checkpoint(self, t: int) -> Path:
        """The hidden directory checkpoint t is written into, emptied; `commit_checkpoint` makes it visible."""
        tmp = self.path / "checkpoints" / f".{checkpoint_name(t)}.tmp"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, t: int, state: dict, keep: int) -> None:
        atomic_write_text(tmp / "trainer_state.json", json.dumps({"iteration": t, **state}))
        replace_dir(tmp, self.path / "checkpoints" / checkpoint_name(t))
        if keep:
            for _, old in self.checkpoints()[:-keep]:
                shutil.rmtree(old)

    # -------------------------------------------------------------- results
    def write_iteration(self, t: int, rows: list[dict], metrics: dict) -> None:
        if self.main:
            atomic_write_jsonl(self.path / "generations" / f"iter_{t:03d}.jsonl", rows)
            with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(strict_json(metrics) + "\n")

    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return read_jsonl(path) if path.is_file() else []

    def write_budget(self, extra: dict | None = None) -> dict[str, float]:
        """budget.json: what the run spent, summed over metrics.jsonl (so a resumed run counts every iteration
        once): policy samples drawn, completions scored by the training reward, tokens generated, wall time."""
        rows = self.metrics()
        budget = {key: sum(r.get(key) or 0 for r in rows) for key in BUDGET_KEYS}
        budget.update(extra or {})
        atomic_write_text(self.path / "budget.json", strict_json(budget, indent=2))
        return budget


def config_changes(saved: Path, config) -> list[str]:
    """The fields of `config` that differ from the config.yaml a run directory holds (a field the saved file
    lacks, from an older version, counts as its default). An input file now at another path but with the
    content hash inputs.json recorded is the same setting: a package's preset file after a reinstall elsewhere."""
    import yaml

    before = {**Config().to_dict(), **yaml.safe_load(saved.read_text())}
    recorded = saved.parent / INPUTS
    hashes = json.loads(recorded.read_text()) if recorded.is_file() else {}

    def same_input(key: str, value) -> bool:
        return (
            key in hashes
            and isinstance(value, str)
            and Path(value).expanduser().is_file()
            and _sha256(Path(value).expanduser()) == hashes[key]["sha256"]
        )

    return [k for k, v in config.to_dict().items() if not (_same_setting(k, before.get(k), v) or same_input(k, v))]


def _same_setting(key: str, a, b) -> bool:
    """Equal values, or two spellings of one path (runs/ref/ and runs/ref)."""
    if a == b:
        return True
    if key in PATH_FIELDS and isinstance(a, str) and isinstance(b, str) and a and b:
        return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
    return False


def checkpoint_name(t: int) -> str:
    return "warmup" if t == WARMUP else f"iter_{t:03d}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
