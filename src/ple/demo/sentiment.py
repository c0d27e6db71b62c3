"""The IMDb-style positive-sentiment task on the Pang & Lee reviews, and its held-out judge.

Prompts are short openings of real reviews (negative ones included), which the model is
asked to continue. Training and evaluation prompts come from disjoint reviews.
The held-out judge (MiniLM embeddings + logistic regression, trained on the Pang & Lee
sentences) is never used in training.
"""

import csv
import functools
import json
import re
from pathlib import Path

import numpy as np

from ple.demo import assets
from ple.errors import PLEError
from ple.io import atomic_write_jsonl, atomic_write_text
from ple.presets import SENTIMENT_PRINCIPLES

PROMPT_TEMPLATE = 'Continue this movie review: "{opening}"'
PRINCIPLES = SENTIMENT_PRINCIPLES
SFT_WORDS = 30


def detokenize(text: str) -> str:
    """Undo the corpus' pre-tokenisation: `it , was ( very ) good .` -> `it, was (very) good.`"""
    text = " ".join(text.split())
    text = re.sub(r'"\s*([^"]*?)\s*"', r'"\1"', text)
    text = re.sub(r"\s+([.,;:!?%)\]])", r"\1", text)
    text = re.sub(r"([(\[$])\s+", r"\1", text)
    return re.sub(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)


def read_pang_lee(path: Path) -> list[tuple[int, str]]:
    """(label, text) rows of a Pang & Lee CSV; label is 1 or -1."""
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) != 2 or row[0] not in ("1", "-1"):
                raise PLEError(f"{path} row {i}: expected `label,text` with label 1 or -1")
            rows.append((int(row[0]), row[1]))
    return rows


def prepare(out_dir: Path, n_eval: int = 200, seed: int = 0, n_validation: int = 100) -> tuple[Path, Path]:
    """Write train.jsonl and eval.jsonl query sets (disjoint reviews) and return their paths.

    Also writes sft.jsonl: for each positive training review, its opening prompt and the review's
    next SFT_WORDS words as the response (the SFT baseline's data: real positive reviews). For the powered
    comparison, validation.jsonl holds the last n_validation training prompts, on which it tunes learning rates,
    and compare_train.jsonl and compare_sft.jsonl are the training and SFT sets without them."""
    reviews = read_pang_lee(assets.pang_lee_path() / "reviews.csv")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(reviews))
    if n_eval >= len(reviews):
        raise PLEError(f"n_eval={n_eval} leaves no training reviews (there are {len(reviews)})")

    def rows(indices):
        out, sft = [], []
        for i in indices:
            label, text = reviews[i]
            words = detokenize(text).split()
            n_words = int(rng.integers(4, 9))  # 4-8 words
            opening = " ".join(words[:n_words]).strip('"')
            out.append({"prompt": PROMPT_TEMPLATE.format(opening=opening), "review_id": int(i), "label": label})
            if label == 1 and len(words) > n_words:
                sft.append({"prompt": out[-1]["prompt"], "response": " ".join(words[n_words : n_words + SFT_WORDS])})
        return out, sft

    train, evaluation = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    atomic_write_jsonl(evaluation, rows(order[:n_eval])[0])
    train_rows, sft_rows = rows(order[n_eval:])
    atomic_write_jsonl(train, train_rows)
    atomic_write_jsonl(out_dir / "sft.jsonl", sft_rows)
    validation = train_rows[-n_validation:]
    held_out = {r["prompt"] for r in validation}
    atomic_write_jsonl(out_dir / "validation.jsonl", validation)
    atomic_write_jsonl(out_dir / "compare_train.jsonl", train_rows[:-n_validation])
    atomic_write_jsonl(out_dir / "compare_sft.jsonl", [r for r in sft_rows if r["prompt"] not in held_out])
    return train, evaluation


class SentimentJudge:
    """P(positive) from mean-pooled, L2-normalised MiniLM embeddings and a logistic-regression head."""

    def __init__(self, head_path: Path | None = None, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        encoder = assets.minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(encoder)
        self.encoder = AutoModel.from_pretrained(encoder).eval()
        self.batch_size = batch_size
        self.torch = torch
        head_path = head_path or assets.cache_dir() / "sentiment-judge" / "head.json"
        if not head_path.is_file():
            train_head(self, head_path)
        head = json.loads(head_path.read_text())
        self.coef, self.intercept, self.accuracy = np.array(head["coef"]), head["intercept"], head["test_accuracy"]

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        with self.torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[i : i + self.batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt"
                )
                hidden = self.encoder(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(self.torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384))

    def positive_probability(self, texts: list[str]) -> list[float]:
        logits = self.embed(texts) @ self.coef + self.intercept
        return (1 / (1 + np.exp(-logits))).tolist()

    def __call__(self, prompts, completions, **_):
        """Reward contract, so the judge can also serve as a (held-out) reward."""
        return self.positive_probability(list(completions))


def train_head(judge: SentimentJudge, path: Path, seed: int = 0) -> None:
    """Fit the logistic-regression head on 80% of the Pang & Lee sentences; keep the other 20% for accuracy."""
    from sklearn.linear_model import LogisticRegression

    rows = read_pang_lee(assets.pang_lee_path() / "sentences.csv")
    labels = np.array([label == 1 for label, _ in rows], dtype=int)
    features = judge.embed([detokenize(text) for _, text in rows])
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(0.8 * len(rows))
    train, test = order[:cut], order[cut:]
    head = LogisticRegression(C=10.0, max_iter=2000).fit(features[train], labels[train])
    accuracy = float(head.score(features[test], labels[test]))
    atomic_write_text(
        path,
        json.dumps(
            {
                "coef": head.coef_[0].tolist(),
                "intercept": float(head.intercept_[0]),
                "test_accuracy": accuracy,
                "n_train": len(train),
                "n_test": len(test),
                "source": "Pang & Lee sentence polarity, 80/20 split, seed 0",
            }
        ),
    )


@functools.cache
def shared_judge() -> SentimentJudge:
    """One judge per process: its encoder loads once."""
    return SentimentJudge()


def judge_reward(prompts, completions, **_) -> list[float]:
    """The held-out judge's P(positive) as a reward function (`ple.sentiment:judge_reward`), e.g. in eval_rewards."""
    return shared_judge().positive_probability(list(completions))
