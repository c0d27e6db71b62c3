"""Tiny offline fixtures: a word-level tokenizer and 2-layer Llama models built in code."""

import json
import random
from pathlib import Path

import pytest
import torch

from ple.evaluation.metrics import answer_kl, continuation_logprobs
from ple.testing import WORDS, build_tiny_model


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_chat"), chat=True))


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_text"), chat=False))


def write_queries(path: Path, n: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = [{"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))), "id": i} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def queries_file(tmp_path) -> Path:
    return write_queries(tmp_path / "queries.jsonl")


@pytest.fixture
def reward_module(tmp_path) -> str:
    """A reward file: counts 'good'-ish words, so guided and plain answers differ in score."""
    path = tmp_path / "toy_reward.py"
    path.write_text(
        "POSITIVE = {'good', 'great', 'wonderful', 'fun', 'brilliant', 'loved', 'best', 'happy'}\n"
        "NEGATIVE = {'bad', 'awful', 'terrible', 'boring', 'hated', 'worst', 'dull', 'sad'}\n"
        "def positivity(prompts, completions, **columns):\n"
        "    out = []\n"
        "    for c in completions:\n"
        "        words = c.split()\n"
        "        out.append((sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)) / 4)\n"
        "    return out\n"
        "def always_nan(prompts, completions, **columns):\n"
        "    return [float('nan')] * len(completions)\n"
        "def half_none(prompts, completions, **columns):\n"
        "    return [None if i % 2 else len(c) / 100 for i, c in enumerate(completions)]\n"
        "def wrong_length(prompts, completions, **columns):\n"
        "    return [0.0]\n"
        "def echo_columns(prompts, completions, **columns):\n"
        "    assert 'id' in columns and len(columns['id']) == len(completions), columns\n"
        "    return [float(i) for i in columns['id']]\n"
    )
    return str(path)


def tiny_config(model: str, dataset: Path, output_dir: Path, reward: str | None, **overrides) -> dict:
    config = dict(
        model=model,
        dataset=str(dataset),
        principle="be good and great and wonderful",
        reward=reward,
        output_dir=str(output_dir),
        iterations=2,
        queries_per_iteration=6,
        batch_size=2,
        gradient_accumulation_steps=2,
        max_new_tokens=6,
        learning_rate=5e-3,
        seed=0,
        device="cpu",
    )
    config.update(overrides)
    return config


@pytest.fixture
def track_params(monkeypatch):
    """Record each trainer's trainable parameters right after the model is set up."""
    from ple.training.loop import PLETrainer

    original = PLETrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)  # builds the model
        self.initial = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    monkeypatch.setattr(PLETrainer, "__init__", init)


@torch.no_grad()
def response_kls(model, base, rows: list[dict], pad_id: int, batch_size: int = 16) -> list[tuple[float, float]]:
    """`answer_kl` (exact, k1) per row, both models teacher-forced on the row's prompt and response: the tests'
    second way to the KL the evaluation computes from pi's own generation steps (Evaluator.add_kl)."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts, responses = [r["prompt_ids"] for r in batch], [r["response_ids"] for r in batch]
        lp = continuation_logprobs(model, prompts, responses, pad_id)
        lq = continuation_logprobs(base, prompts, responses, pad_id)
        out += [answer_kl(a, b, r) for a, b, r in zip(lp, lq, responses)]
    return out
