"""The demo's on-task measure: does an answer read as a continuation of the review it was asked to continue, or as
a reply to the user ("I'm so glad you're happy with the movie...")? It never takes part in training.

The base model (SmolLM2-135M-Instruct, frozen, with no adapter) reads the answer under two framings, and the
answer's mean per-token log-likelihood ratio decides:

    ratio(a) = mean_t log p(a_t | review frame, a_<t) - mean_t log p(a_t | reply frame, a_<t)
    on-task(a) = ratio(a) > threshold

The threshold is chosen on packaged data, apart from any answer the demo evaluates: it is the ratio below which
FALSE_REPLY_RATE of Pang & Lee review sentences fall (half of the sample chooses it), so that real review prose is
rarely read as a reply; the other half, and as many chatterbot-corpus dialogue lines, report how the measure reads
each kind (as the sentiment judge reports its accuracy). Why not the balanced-accuracy threshold: the dialogue
lines are mostly short small talk and facts, not the "I'm so glad you liked it" voice the measure is for, and the
threshold that best parts them from review sentences read 53% of the base model's answers on validation prompts as
replies; this rule reads 20%, and about half of a sample of those are replies or talk to the user.
"""

import functools
import json
from pathlib import Path

import numpy as np
import yaml

from ple.batching import pad_batch
from ple.demo import assets
from ple.io import atomic_write_text
from ple.progress import Progress

FRAMES = {
    "review": 'The following is an excerpt from a movie review written by a critic:\n\n"',
    "reply": "The following is a chat assistant's reply to a user who talked about a movie:\n\n\"",
}
MAX_ANSWER_TOKENS = 64
CALIBRATION_PER_CLASS = 400  # texts of each kind, half to choose the threshold, half to report its accuracy
FALSE_REPLY_RATE = 0.05  # the share of review sentences the threshold reads as replies
# The rule's name, recorded with the cached threshold: a threshold cached under another rule is chosen again.
RULE = f"the {FALSE_REPLY_RATE:.0%} quantile of review sentences' ratios"


def false_reply_threshold(on_task: np.ndarray, rate: float = FALSE_REPLY_RATE) -> float:
    """The threshold t with P(on <= t) = rate: the `rate` quantile of the on-task texts' ratios (linear
    interpolation between order statistics, numpy's default)."""
    return float(np.quantile(on_task, rate))


def balanced_accuracy(on_task: np.ndarray, off_task: np.ndarray, threshold: float) -> float:
    return float((np.mean(on_task > threshold) + np.mean(off_task <= threshold)) / 2)


def dialogue_lines(folder: Path) -> list[str]:
    """Every line of the chatterbot-corpus English dialogues with at least three words and no code block (the
    corpus' coding topic answers in code)."""
    lines = []
    for path in sorted(folder.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            for line in conversation:
                if isinstance(line, str) and len(line.split()) >= 3 and "```" not in line:
                    lines.append(" ".join(line.split()))
    return lines


class OnTaskJudge:
    """ratio(a) > threshold, with the base model loaded once; the threshold is computed on first use and cached."""

    def __init__(self, model_path: Path | None = None, threshold_path: Path | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_path = model_path or assets.smollm2_path()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.batch_size = batch_size
        self.torch = torch
        threshold_path = threshold_path or assets.cache_dir() / "on-task" / "threshold.json"
        record = json.loads(threshold_path.read_text()) if threshold_path.is_file() else {}
        if record.get("rule") != RULE:
            calibrate(self, threshold_path)
            record = json.loads(threshold_path.read_text())
        self.threshold, self.accuracy = record["threshold"], record["test_balanced_accuracy"]
        self.reviews_read_on_task, self.dialogue_read_as_replies = record["test_on_task"], record["test_off_task"]

    def mean_logprob(self, frame: str, texts: list[str], progress=None) -> np.ndarray:
        """Mean per-token log p of each text (cut to MAX_ANSWER_TOKENS) and a closing quote after `frame`; one
        `progress.advance()` per batch when given."""
        torch = self.torch
        prefix = self.tokenizer(frame, add_special_tokens=False)["input_ids"]
        closing = self.tokenizer('"', add_special_tokens=False)["input_ids"]
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                rows = [
                    prefix
                    + self.tokenizer(t.strip()[:2000], add_special_tokens=False)["input_ids"][:MAX_ANSWER_TOKENS]
                    + closing
                    for t in texts[i : i + self.batch_size]
                ]
                ids, mask = pad_batch(rows, 0, "cpu", side="right")  # right: each row's positions start at 0
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                token_lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
                for j, row in enumerate(rows):
                    out.append(token_lp[j, len(prefix) - 1 : len(row) - 1].mean().item())
                if progress is not None:
                    progress.advance()
        return np.array(out)

    def ratio(self, texts: list[str], progress=None) -> np.ndarray:
        review, reply = (self.mean_logprob(FRAMES[frame], texts, progress) for frame in ("review", "reply"))
        return review - reply

    def __call__(self, prompts, completions, **_) -> list[float]:
        """Reward contract: 1.0 for an answer that reads as the review's continuation, else 0.0 (the mean is the
        on-task share). Reads the answers only."""
        return [float(r > self.threshold) for r in self.ratio(list(completions))]


def calibrate(judge: OnTaskJudge, path: Path, seed: int = 0) -> None:
    """Choose the threshold on half of CALIBRATION_PER_CLASS review sentences; report on the other half and on as
    many dialogue lines how each kind is read."""
    from ple.demo.sentiment import detokenize, read_pang_lee

    rng = np.random.default_rng(seed)
    reviews = sorted({detokenize(t) for _, t in read_pang_lee(assets.pang_lee_path() / "sentences.csv")})
    replies = sorted(set(dialogue_lines(assets.chatterbot_path())) - set(reviews))
    n = CALIBRATION_PER_CLASS
    batches = 4 * -(-n // judge.batch_size)  # two frames for each of the two kinds
    with Progress(total=batches, description="on-task measure, first use: calibrating its threshold") as progress:
        on = judge.ratio([reviews[i] for i in rng.choice(len(reviews), n, replace=False)], progress)
        off = judge.ratio([replies[i] for i in rng.choice(len(replies), n, replace=False)], progress)
    half = n // 2
    threshold = false_reply_threshold(on[:half])
    record = {
        "rule": RULE,
        "threshold": threshold,
        "test_on_task": float(np.mean(on[half:] > threshold)),
        "test_off_task": float(np.mean(off[half:] <= threshold)),
        "test_balanced_accuracy": balanced_accuracy(on[half:], off[half:], threshold),
        "n_per_class": n,
        "source": "Pang & Lee sentences (on task) vs chatterbot-corpus English lines (replies), seed 0, halves",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))


@functools.cache
def shared_on_task_judge() -> OnTaskJudge:
    """One judge per process: the model loads once."""
    return OnTaskJudge()


def on_task(prompts, completions, **_) -> list[float]:
    """The on-task measure as a reward function (`ple.sentiment:on_task`), for eval_rewards: 1.0 or 0.0 per answer."""
    return shared_on_task_judge()(prompts, completions)
