"""Crash-safe file writes: write to a temporary file, then rename over the target."""

import csv
import io
import json
import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ple.errors import PLEError


def temporary(path: Path) -> Path:
    """Where a file or directory is written before it is renamed to `path`, so a kill never leaves half of it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def strict_json(value: Any, **kwargs) -> str:
    """JSON that strict parsers accept: a NaN or infinite number is written as null."""
    return json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def atomic_write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(strict_json(row) + "\n" for row in rows))


def atomic_write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One CSV row per mapping; the columns are every key, in the order they first appear (a "method" header for
    no rows)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)) or ["method"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


# The line breaks of str.splitlines that a JSON string cannot hold unescaped (control characters); the others
# (U+0085, U+2028, U+2029) may sit raw inside a string, and a model's answer can contain one.
_JSONL_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e]")


def jsonl_lines(text: str) -> list[str]:
    """str.splitlines(text) without splitting inside a JSON string."""
    lines = _JSONL_LINE_BREAK.split(text)
    return lines[:-1] if lines[-1] == "" else lines  # as splitlines: a final line break ends a line, adds none


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a kill mid-append) is dropped, a damaged one elsewhere is one line."""
    rows = []
    lines = jsonl_lines(Path(path).read_text(encoding="utf-8"))
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise PLEError(f"{path} line {i + 1} is not valid JSON ({e.msg}); {DAMAGED}") from None
    return rows


DAMAGED = "ple writes every file whole, so it was damaged since: delete it, and a rerun redoes it"


def read_json(path: Path) -> Any:
    """A JSON file ple wrote; one line naming it when it is no longer valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PLEError(f"{path} is not valid JSON ({e.msg}); {DAMAGED}") from None


def read_json_if_present(path: Path) -> Any:
    """read_json of a file a step may not have written yet; None when it is missing."""
    return read_json(path) if Path(path).is_file() else None


def finite_number(value) -> bool:
    """A number a metric row can hold as one: an int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def same_path(a, b) -> bool:
    """Two non-empty strings that spell one path (runs/ref/ and runs/ref, ~/m and /root/m)."""
    if not (isinstance(a, str) and isinstance(b, str) and a and b):
        return False
    return a == b or os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place, replacing an older one."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """YAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps the last silently)."""

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, which the safe loader merges itself
                continue
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.YAMLError(f"key '{key}' is given twice (line {mark.line + 1})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return StrictLoader


def load_yaml(text: str, what: str) -> Any:
    """YAML text, with a duplicate key refused; one PLEError line naming `what` for any problem."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise PLEError(f"{what} is not valid YAML: {str(e).strip().splitlines()[0]}") from None


def read_text_file(path: str | Path, what: str) -> str:
    """A UTF-8 text file, or one PLEError line saying why it cannot be read (missing, a directory, not UTF-8)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PLEError(f"{what} {path} is a directory; name a file")
    if not path.is_file():
        raise PLEError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PLEError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def read_yaml_file(path: str | Path, what: str) -> Any:
    return load_yaml(read_text_file(path, what), f"{what} {path}")


def writable_dir(path: Path, what: str) -> Path:
    """`path` if this process can make it a directory and write there, else one line saying why not."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise PLEError(
            f"{what} {path} is a file, not a directory"
            if existing == path.absolute()
            else f"{what} {path} is inside {existing}, which is a file"
        )
    if not os.access(existing, os.W_OK):
        raise PLEError(f"{what} {path} is not writable ({existing})")
    return path
