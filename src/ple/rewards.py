"""Rewards behind TRL's contract: f(prompts, completions, **columns) -> list[float | None].

A reward is named by a string:
  - "vader": VADER sentiment of the completion, in [-1, 1];
  - "module:function" or "path/to/file.py:function": any Python callable;
  - anything else: an AutoModelForSequenceClassification path or hub id.
Several rewards combine into a weighted sum. A None, NaN or inf score means "no
reward" for that completion; the trainer skips the query and counts it.
"""

import contextlib
import importlib
import importlib.util
import io
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ple.data import Prompt, prompt_text
from ple.errors import PLEError, first_line

RewardFn = Callable[..., list[float | None]]
_CALLABLE = re.compile(r"^(?P<module>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def reward_code_files(spec) -> dict[str, Path]:
    """The source file of each `module:function` or `file.py:function` reward in a reward spec (a name, a map or a
    list of them): what a resume checks for edits, as it checks the data files."""
    items = spec if isinstance(spec, list) else [spec]
    names = [i.get("name") if isinstance(i, dict) else i for i in items]
    files = {}
    for name in names:
        match = _CALLABLE.match(name) if isinstance(name, str) else None
        if match is None:
            continue
        module = match["module"]
        if module.endswith(".py"):
            path = Path(module).expanduser()
        else:
            try:
                found = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                found = None
            path = Path(found.origin) if found is not None and found.origin else None
        if path is not None and path.is_file():
            files[name] = path
    return files


def vader_reward(prompts: Sequence[Prompt], completions: Sequence[str], **_: Any) -> list[float]:
    """VADER compound sentiment of each completion (the prompt is not scored).

    Completions may also be TRL's conversational form, a list of messages ending with the answer.
    """
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [_vader().polarity_scores(t)["compound"] for t in texts]


_VADER = None


def _vader():
    global _VADER
    if _VADER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise PLEError("reward 'vader' needs the vaderSentiment package: pip install vaderSentiment") from None
        _VADER = SentimentIntensityAnalyzer()
    return _VADER


def load_callable(spec: str) -> RewardFn:
    """`module:function` or `file.py:function`."""
    match = _CALLABLE.match(spec)
    if not match:
        raise PLEError(f"reward '{spec}' is not of the form module:function")
    module_name, attr = match["module"], match["attr"]
    captured = io.StringIO()
    try:
        with _isolated_import(captured):
            fn = _import_attr(module_name, attr)
    except PLEError:
        raise
    except (ImportError, AttributeError) as e:
        raise PLEError(f"reward '{spec}' could not be loaded: {e}") from None
    except SyntaxError as e:
        raise PLEError(f"reward '{spec}' could not be loaded: {e.msg} ({e.filename}, line {e.lineno})") from None
    except SystemExit as e:  # argparse at import time, say: never mistaken for ple's own exit
        said = captured.getvalue().strip().splitlines()
        raise PLEError(
            f"reward '{spec}' exited while it was imported (SystemExit {e.code}"
            f"{': ' + said[-1] if said else ''}); a reward module must not parse sys.argv or exit at import"
        ) from None
    except Exception as e:  # whatever the module raises while it is imported
        raise PLEError(f"reward '{spec}' could not be loaded: {type(e).__name__}: {e}") from None
    sys.stderr.write(captured.getvalue())  # what an imported module said (a warning, say) is not lost
    if not callable(fn):
        raise PLEError(f"reward '{spec}' is not callable")
    return fn


@contextlib.contextmanager
def _isolated_import(stderr: io.StringIO):
    """While a reward module is imported: sys.argv holds no ple arguments, and what it writes to stderr is held
    back (an argparse error of its own would read as ple's)."""
    argv = sys.argv
    sys.argv = [argv[0]]
    try:
        with contextlib.redirect_stderr(stderr):
            yield
    finally:
        sys.argv = argv


def _import_attr(module_name: str, attr: str):
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise PLEError(f"reward file not found: {module_name}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part)
    return fn


class ClassifierReward:
    """A sequence-classification model as a reward.

    One output logit: the logit is the reward (a reward model). Several labels: the
    probability (or logit) of `label`. `input` is "pair" (tokenizer(prompt, completion),
    or the tokenizer's chat template for chat prompts) or "completion" (the completion alone).
    """

    def __init__(
        self,
        name: str,
        label: str | None = None,
        output: str = "prob",
        input: str = "pair",
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        model=None,
        tokenizer=None,
        dtype: str = "float32",
        max_length: int = 0,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ple.model import DTYPES

        try:
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(name)
            model = model or AutoModelForSequenceClassification.from_pretrained(name, dtype=DTYPES[dtype])
            self.model = model.to(device).eval()
        except Exception as e:
            raise PLEError(f"reward model '{name}' could not be loaded: {str(e).splitlines()[0]}") from None
        labels = self.model.config.id2label or {}
        self.index: int | None = None
        if self.model.config.num_labels > 1:
            by_name = {str(v): int(k) for k, v in labels.items()}
            if label is None:
                raise PLEError(f"reward model '{name}' has labels {list(by_name)}; set reward_label to one of them")
            if label not in by_name:
                raise PLEError(f"reward_label '{label}' is not a label of '{name}' (it has: {', '.join(by_name)})")
            self.index = by_name[label]
        if output not in ("prob", "logit") or input not in ("pair", "completion"):
            raise PLEError(f"reward '{name}': output must be prob|logit and input pair|completion")
        self.output, self.input, self.batch_size, self.device = output, input, batch_size, device
        self.max_length = max_length

    @classmethod
    def from_model(cls, model, tokenizer=None, **options) -> "ClassifierReward":
        """A loaded sequence-classification model as a reward; its tokenizer is loaded from the model's name unless
        given. A model with one output is a reward model; one with labels needs `label`."""
        return cls(model.name_or_path, model=model, tokenizer=tokenizer, **options)

    def _encode(self, prompts: Sequence[Prompt], completions: Sequence[str]):
        kw = dict(
            padding=True,
            truncation=True,
            return_tensors="pt",
            **({"max_length": self.max_length} if self.max_length else {}),
        )
        if self.input == "completion":
            return self.tokenizer(list(completions), **kw)
        if getattr(self.tokenizer, "chat_template", None):  # a chat reward model reads the conversation
            texts = [
                self.tokenizer.apply_chat_template(
                    ([{"role": "user", "content": p}] if isinstance(p, str) else list(p))
                    + [{"role": "assistant", "content": c}],
                    tokenize=False,
                )
                for p, c in zip(prompts, completions)
            ]
            # The template writes the special tokens (a BOS) itself; adding them again would give two, as TRL avoids.
            return self.tokenizer(texts, add_special_tokens=False, **kw)
        return self.tokenizer([prompt_text(p) for p in prompts], list(completions), **kw)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str], **_: Any) -> list[float]:
        # Batches of similar length waste less on padding; the scores go back in the given order.
        order = sorted(range(len(completions)), key=lambda i: len(prompt_text(prompts[i])) + len(completions[i]))
        scores: list[float] = [0.0] * len(completions)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self._encode([prompts[i] for i in rows], [completions[i] for i in rows])
            logits = self.model(**batch.to(self.device)).logits.float()
            if self.index is None:
                values = logits[:, 0]
            elif self.output == "prob":
                values = logits.softmax(-1)[:, self.index]
            else:
                values = logits[:, self.index]
            for i, value in zip(rows, values.tolist()):
                scores[i] = value
        return scores


def _build_one(spec: str, options: dict[str, Any], loading: dict[str, Any]) -> RewardFn:
    if spec == "vader":
        return vader_reward
    if _CALLABLE.match(spec):
        return load_callable(spec)
    if ":" in spec:  # no hub id has one
        raise PLEError(f"reward '{spec}' is not of the form module:function or file.py:function (name the function)")
    return ClassifierReward(spec, **options, **loading)


def build_reward(
    spec: str | list,
    label: str | None = None,
    output: str = "prob",
    input: str = "pair",
    batch_size: int = 32,
    device="cpu",
    dtype: str = "float32",
    max_length: int = 0,
) -> RewardFn:
    """The config's `reward` as one callable. A list gives the weighted sum of its parts. `dtype` and `max_length`
    are a reward model's weights and the most tokens it reads."""
    loading = {"batch_size": batch_size, "device": device, "dtype": dtype, "max_length": max_length}
    if isinstance(spec, str):
        return _build_one(spec, {"label": label, "output": output, "input": input}, loading)
    parts: list[tuple[float, RewardFn]] = []
    for item in spec:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise PLEError(
                f"reward list entries are names or {{name, weight, label, output, input}} maps, got {item!r}"
            )
        unknown = set(item) - {"name", "weight", "label", "output", "input"}
        if unknown:
            raise PLEError(f"reward '{item['name']}': unknown key(s) {', '.join(sorted(unknown))}")
        weight = item.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise PLEError(f"reward '{item['name']}': weight must be a number, got {weight!r}")
        options = {"label": item.get("label"), "output": item.get("output", "prob"), "input": item.get("input", "pair")}
        parts.append((float(weight), _build_one(item["name"], options, loading)))
    if not parts:
        raise PLEError("reward list is empty")
    return summed_reward([fn for _, fn in parts], [weight for weight, _ in parts])


def summed_reward(fns: list[RewardFn], weights: list[float] | None = None) -> RewardFn:
    """The weighted sum of several rewards (weights 1 by default); None where any part gives None."""
    weights = weights or [1.0] * len(fns)

    def combined(prompts, completions, **columns):
        totals: list[float | None] = [0.0] * len(completions)
        for weight, fn in zip(weights, fns):
            for i, s in enumerate(score(fn, prompts, completions, **columns)):
                totals[i] = None if totals[i] is None or s is None else totals[i] + weight * s
        return totals

    return combined


def config_reward(spec: str | list, config, device="cpu") -> RewardFn:
    """A reward spec built with the config's classifier options (label, output, input, batch size, dtype, device,
    max length); a reward model runs on `device` (the policy's) unless reward_device names another."""
    from ple.model import resolve_device, resolve_dtype

    device = torch.device(device) if config.reward_device == "auto" else resolve_device(config.reward_device)
    return build_reward(
        spec,
        config.reward_label,
        config.reward_output,
        config.reward_input,
        config.reward_batch_size,
        device,
        resolve_dtype(config.reward_dtype, device),
        config.reward_max_length,
    )


def score(fn: RewardFn, prompts: Sequence[Prompt], completions: Sequence[str], **columns: Any) -> list[float | None]:
    """Call a reward and check its answer; NaN and inf become None (no reward). A reward that raises is one
    PLEError naming it and what it raised (a reward without **kwargs on a dataset with extra columns, say)."""
    name = getattr(fn, "__name__", fn)
    try:
        out = fn(prompts=list(prompts), completions=list(completions), **columns)
    except PLEError:
        raise
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise PLEError(
                f"reward {name!s} does not take the dataset's columns ({', '.join(columns) or 'none'}): "
                f"give it a **kwargs parameter, as TRL's reward contract has ({e})"
            ) from None
        raise PLEError(f"reward {name!s} raised TypeError: {e}") from None
    except Exception as e:
        raise PLEError(f"reward {name!s} raised {type(e).__name__}: {first_line(e)}") from None
    except SystemExit as e:
        raise PLEError(f"reward {name!s} called sys.exit({e.code}); a reward must return scores") from None
    if hasattr(out, "tolist"):
        out = out.tolist()
    if not isinstance(out, (list, tuple)) or len(out) != len(completions):
        got = len(out) if isinstance(out, (list, tuple)) else type(out).__name__
        raise PLEError(f"reward {name!s} returned {got} scores for {len(completions)} completions")
    clean: list[float | None] = []
    for s in out:
        if s is None:
            clean.append(None)
            continue
        try:
            s = float(s)
        except (TypeError, ValueError):
            raise PLEError(f"reward {name!s} returned a non-number: {s!r}") from None
        clean.append(s if math.isfinite(s) else None)
    return clean


def check_reward(fn: RewardFn, row: dict[str, Any]) -> None:
    """Call a reward once on a query row with a stand-in answer, so that one that cannot score (it raises, or
    takes no **kwargs for the row's other columns) fails before any work rather than after a generation."""
    score(fn, [row["prompt"]], ["A test answer."], **{k: [v] for k, v in row.items() if k != "prompt"})


class RunningStd:
    """Running standard deviation of every reward seen (Welford), for `reward_scaling: standardized`."""

    def __init__(self, count: int = 0, mean: float = 0.0, m2: float = 0.0):
        self.count, self.mean, self.m2 = count, mean, m2

    def update(self, values: Sequence[float | None]) -> None:
        for v in values:
            if v is None:
                continue
            self.count += 1
            delta = v - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (v - self.mean)

    @property
    def std(self) -> float:
        """Sample std; 1.0 until two distinct rewards have been seen, so a gap is never divided by 0."""
        if self.count < 2 or self.m2 <= 0:
            return 1.0
        return math.sqrt(self.m2 / (self.count - 1))

    def state(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}
