"""Query and SFT sets from local files (JSONL, JSON, CSV, Parquet) or Hugging Face datasets."""

import json
from pathlib import Path
from typing import Any

from ple.errors import PLEError
from ple.io import jsonl_lines

FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
Prompt = str | list[dict[str, str]]


def load_rows(source: str, split: str = "train", config_name: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local file, or of a hub dataset when `source` is no local path."""
    path = Path(source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        if not path.is_file():
            raise PLEError(f"data file not found: {source}")
        return _load_file(path)
    try:
        import datasets

        return list(datasets.load_dataset(source, config_name, split=split))
    except Exception as e:  # network, unknown name, bad split: one line either way
        raise PLEError(f"could not load dataset '{source}' (split {split!r}): {str(e).splitlines()[0]}") from None


def _load_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            for i, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8-sig")), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise PLEError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        elif suffix == ".csv":
            import pandas as pd

            rows = pd.read_csv(path, keep_default_na=False).to_dict("records")
        elif suffix == ".parquet":
            import pandas as pd

            rows = pd.read_parquet(path).to_dict("records")
        else:
            raise PLEError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json, .csv or .parquet)")
    except PLEError:
        raise
    except Exception as e:
        raise PLEError(f"{path}: could not read {suffix} file: {str(e).splitlines()[0]}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PLEError(f"{path}: expected a list of records (one object per row)")
    if not rows:
        raise PLEError(f"{path}: the file holds no rows")
    return rows


def _check_unicode(text: str, where: str) -> str:
    """Text a tokenizer can encode: a lone surrogate (from a JSON \\ud800 escape) is not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PLEError(f"{where}: the prompt holds an invalid character ({e.reason} at position {e.start})") from None
    return text


def _check_prompt(value: Any, where: str) -> Prompt:
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if isinstance(value, str):
        if not value.strip():
            raise PLEError(f"{where}: empty prompt")
        return _check_unicode(value, where)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        messages = [_check_message(m, f"{where} message {j}") for j, m in enumerate(value)]
        if not any(m["content"].strip() for m in messages):
            raise PLEError(f"{where}: empty prompt")
        return messages
    raise PLEError(f"{where}: prompt must be text or a non-empty list of {{role, content}} messages")


CHAT_ROLES = ("system", "user", "assistant")


def _check_message(message: dict, where: str) -> dict[str, str]:
    """A chat message as chat templates read it: a known role and text content (never None or a list of parts
    turned into its Python repr)."""
    role, content = message["role"], message["content"]
    if role not in CHAT_ROLES:
        raise PLEError(f"{where}: role {role!r} is not one of {', '.join(CHAT_ROLES)}")
    if not isinstance(content, str):
        raise PLEError(f"{where}: content must be text, got {type(content).__name__}")
    return {"role": role, "content": _check_unicode(content, where)}


RESERVED_COLUMNS = ("prompts", "completions")  # the reward's own arguments (TRL's contract)


def query_rows(rows: list[dict[str, Any]], source: str, prompt_column: str = "prompt") -> list[dict[str, Any]]:
    """Validate the query set: each row gets a checked `prompt`; other columns pass through to rewards."""
    if prompt_column not in rows[0]:
        raise PLEError(f"{source}: missing column '{prompt_column}' (columns: {', '.join(map(str, rows[0]))})")
    clash = [c for c in RESERVED_COLUMNS if c in rows[0] and c != prompt_column]
    if clash:
        raise PLEError(f"{source}: a column named '{clash[0]}' would collide with the reward's own argument; rename it")
    out = []
    for i, row in enumerate(rows):
        if prompt_column not in row:
            raise PLEError(f"{source} row {i}: missing column '{prompt_column}'")
        extra = {k: v for k, v in row.items() if k != prompt_column}
        out.append({**extra, "prompt": _check_prompt(row[prompt_column], f"{source} row {i}")})
    return out


def sft_rows(rows: list[dict[str, Any]], source: str, prompt_column: str = "prompt") -> list[dict[str, Any]]:
    """SFT pairs {prompt, response} from rows with prompt + response, or a `messages` conversation
    whose last message is the assistant's answer."""
    out = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        if "messages" in row:
            messages = _check_prompt(row["messages"], where)
            if isinstance(messages, str) or messages[-1]["role"] != "assistant" or len(messages) < 2:
                raise PLEError(f"{where}: `messages` must end with an assistant message after the prompt")
            prompt, response = messages[:-1], messages[-1]["content"]
        elif prompt_column in row and "response" in row:
            prompt, response = _check_prompt(row[prompt_column], where), row["response"]
        else:
            raise PLEError(f"{where}: SFT rows need '{prompt_column}' and 'response' columns, or 'messages'")
        if not isinstance(response, str) or not response.strip():
            raise PLEError(f"{where}: empty response")
        out.append({"prompt": prompt, "response": response})
    return out


def prompt_text(prompt: Prompt) -> str:
    """A readable one-string form of a prompt (for logs, rewards without a template, and row files)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def load_task_rows(source: str, split: str, config_name: str | None, task: str, seed: int = 0):
    """Rows of a data source, converted from the task's raw schema (see ple.tasks)."""
    from ple.tasks import convert

    return convert(load_rows(source, split, config_name), task, source, seed)
