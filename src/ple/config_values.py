"""How a config's values are read: YAML and `--set key=value` text coerced to a field's type, and a key that is not a
field named in one line (its new name, TRL's name for it, or the nearest key)."""

import difflib
import typing
from collections.abc import Iterable
from typing import Any

import yaml

from ple.errors import PLEError

# Keys that were renamed: an old config names the new key in one line instead of silently meaning something else.
RENAMED_KEYS = {  # old key -> (new key, what it is)
    "beta": ("rank_beta", "the logistic ranking scale; TRL's KL coefficient is dpo_beta, rloo_beta or grpo_beta here"),
}


def coerce(name: str, value: Any, kind: Any) -> Any:
    """Check `value` against the field's type `kind` (a type or a union); strings from the CLI are converted."""
    allowed = typing.get_args(kind) or (kind,)
    if value in ("null", "~") and type(None) in allowed:
        value = None  # --set reward=null, as YAML reads it
    if value is None:
        if type(None) in allowed:
            return None
        raise PLEError(f"{name} cannot be null")
    if isinstance(value, str) and (list in allowed or dict in allowed) and value.lstrip()[:1] in ("[", "{"):
        try:
            value = yaml.safe_load(value)  # --set reward='[vader, {name: m:f, weight: 2}]'
        except yaml.YAMLError:
            raise PLEError(f"{name}={value!r} is not a valid YAML list or mapping") from None
    if isinstance(value, str) and list not in allowed and value.lstrip()[:1] == "[":
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        # --set principle=[a, b] would otherwise become the text "[a, b]". ("{principle}" is a template, not a map.)
        if isinstance(parsed, list):
            raise PLEError(f"{name} takes one value, and {value!r} reads as a YAML list")
    if isinstance(value, str) and str in allowed and float in allowed:
        try:
            return float(value)  # wsft_temperature=0.5 from the CLI; 'auto' stays text
        except ValueError:
            pass
    if isinstance(value, str) and str not in allowed:
        parsed = yaml.safe_load(value) if value.strip() else value
        if isinstance(parsed, str) and float in allowed:
            try:
                parsed = float(parsed)  # YAML reads 1e-4 and -inf as text
            except ValueError:
                pass
        value = parsed
    if bool in allowed and isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    for t in (str, list, dict):
        if t in allowed and isinstance(value, t):
            return value
    expected = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise PLEError(f"{name}={value!r} should be a {expected}")


TRL_NAMES = {  # a TRL / transformers argument -> ple's key for it
    "num_train_epochs": "epochs_per_iteration (passes over each iteration's examples; iterations sets the run)",
    "per_device_train_batch_size": "batch_size (queries per micro-batch; see its help for several processes)",
    "max_completion_length": "max_new_tokens",
    "max_prompt_length": "max_prompt_tokens",
    "num_generations": "grpo_num_generations (grpo); PLE draws 2 answers per query",
    "warmup_steps": "warmup_ratio (a share of the run)",
    "bf16": "dtype: bfloat16",
    "max_steps": "iterations (each draws queries_per_iteration queries)",
}


def unknown_key(key: str, known: Iterable[str]) -> PLEError:
    """The line for a key that is not a field: its new name, TRL's name for it, or the nearest known key."""
    if key in RENAMED_KEYS:
        new, what = RENAMED_KEYS[key]
        return PLEError(f"config key '{key}' was renamed to {new} ({what})")
    if key in TRL_NAMES:
        return PLEError(f"'{key}' is TRL's name; ple's key is {TRL_NAMES[key]}")
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return PLEError(f"unknown config key '{key}'{hint}; `ple train --help` lists them all")


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`--set key=value` pairs as a mapping (values stay text until `coerce`)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PLEError(f"--set expects key=value, got '{pair}'")
        out[key.strip()] = value
    return out
