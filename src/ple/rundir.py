"""What keeps a run directory safe: one run at a time, never into someone else's files, and a resume only of
what is unchanged.

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
from pathlib import Path

from ple.errors import PLEError
from ple.io import atomic_write_text

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
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            hashes[field] = {"path": str(path), "sha256": digest.hexdigest()}
    return hashes


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
