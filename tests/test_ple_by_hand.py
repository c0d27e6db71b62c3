"""One optimizer step of each method, checked against docs/algorithm.md's formulas written out here by hand.

Each test trains a tiny model for one step, captures the gradient that reaches the optimizer, and compares it
with the gradient of the loss computed in this file: the plain prompt x rendered and tokenised here, plain
forward passes of (x + response), log-softmax, the branch rule, the softmax weights and the mean over the step.
Nothing of the trainer's loss, branch or log-prob code is reused, so a fault in any of them shows up as a
different gradient.
"""

import json
import math
import statistics
import zlib

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ple.baselines import make_trainer
from ple.config import load_config
from ple.trainer import PLE, PLETrainer
from ple.training.policy import Policy

PRINCIPLE = "be good and great and wonderful"


class RecordingReward:
    """A deterministic reward spread over [-0.5, 0.5] (so gaps land in every branch) that records what it scored."""

    def __init__(self):
        self.calls: dict[tuple[str, str], float] = {}

    def __call__(self, prompts, completions, **columns):
        scores = [(zlib.crc32(c.encode()) % 11 - 5) / 10 for c in completions]
        self.calls.update({(p, c): s for p, c, s in zip(prompts, completions, scores)})
        return scores


@pytest.fixture
def step_gradients():
    """The gradient of every trainable parameter at each optimizer step, in the optimizer's order."""
    steps = []

    def record(optimizer, args, kwargs):
        steps.append([p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]])

    handle = register_optimizer_step_pre_hook(record)
    yield steps
    handle.remove()


def plain_prompt_ids(tokenizer, query: str, principle: str | None = None) -> list[int]:
    messages = [{"role": "user", "content": query}]
    if principle is not None:
        messages = [{"role": "system", "content": principle}, *messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def logp(model, prompt: list[int], response: list[int]) -> tuple[torch.Tensor, int]:
    """log p(response | prompt), summed over the response's tokens, and their count."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
    token_logp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(response)[:, None])
    return token_logp.sum(), len(response)


def restore_initial_weights(trainer) -> None:
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if name in trainer.initial:
                p.copy_(trainer.initial[name])
    trainer.model.zero_grad(set_to_none=True)


def assert_gradients_equal(trainer, captured: list[torch.Tensor]) -> None:
    expected = [p.grad for p in trainer.model.parameters() if p.requires_grad]
    assert len(expected) == len(captured)
    assert any(g.abs().sum() > 0 for g in expected)
    for want, got in zip(expected, captured):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-6), (got - want).abs().max()


@pytest.mark.parametrize(
    "method, options",
    [
        ("ple", {"margin": 0.5}),
        ("ple", {"rank_loss": "logistic", "rank_beta": 1.5, "rank_sft_coef": 0.3}),
        ("ple", {"wsft_temperature": 0.3, "margin": 0.5}),
        ("ple-symmetric", {"margin": 0.5}),
        ("ple-rank-only", {"margin": 0.5}),
        ("ple-wsft-only", {}),
        ("ple", {"reward_scaling": "standardized", "margin": 0.5}),
    ],
)
def test_one_ple_step_has_the_gradient_of_the_spec_formula(
    method, options, tmp_path, tiny_chat_model, queries_file, reward_module, track_params, step_gradients, monkeypatch
):
    config = load_config(
        overrides=tiny_config(
            tiny_chat_model,
            queries_file,
            tmp_path / "run",
            f"{reward_module}:positivity",  # replaced by the recording reward below
            method=method,
            iterations=1,
            queries_per_iteration=10,
            batch_size=5,
            gradient_accumulation_steps=2,  # one optimizer step over all 10 queries, in two micro-batches
            max_grad_norm=0.0,
            **options,
        )
    )
    reward = RecordingReward()
    trainer = PLETrainer(args=config, reward_funcs=reward)
    generated = []
    original = PLE.generate

    def record_generation(self, records):
        out = original(self, records)
        generated.extend((r.row, r.y, r.y_p) for r in records)
        return out

    monkeypatch.setattr(PLE, "generate", record_generation)
    trainer.train()
    assert len(step_gradients) == 1
    (metrics,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations" / "iter_000.jsonl").read_text().splitlines()]

    restore_initial_weights(trainer)
    tokenizer, model = trainer.tokenizer, trainer.model
    tau = 0.2  # iteration 0 of the exponential schedule; constant for no-decay
    temperature = options.get("wsft_temperature", tau)
    margin, beta = options.get("margin", 0.0), options.get("rank_beta", 2.0)
    rank_coef, sft_coef = (0.0 if method == "ple-wsft-only" else 1.0), (0.0 if method == "ple-rank-only" else 1.0)
    losses, branches = [], []
    # Standardized rewards are divided by the sample std of every reward seen: here, this iteration's 2Q.
    raw = [reward.calls[(r["query"], r["y"])] for r in rows] + [reward.calls[(r["query"], r["y_p"])] for r in rows]
    scale = statistics.stdev(raw) if options.get("reward_scaling") == "standardized" else 1.0
    assert scale != pytest.approx(1.0, abs=0.05) or options.get("reward_scaling") != "standardized"
    for row, (query_row, y, y_p) in zip(rows, generated):
        assert query_row["prompt"] == row["query"] and (y.text, y_p.text) == (row["y"], row["y_p"])
        # Both answers scored against the plain query, never the guided prompt.
        s, s_p = reward.calls[(row["query"], row["y"])], reward.calls[(row["query"], row["y_p"])]
        assert (row["s"], row["s_p"]) == (s, s_p)
        s, s_p = s / scale, s_p / scale
        gap = s_p - s
        if gap > tau:
            branch, winner = "rank", "guided"
        elif gap < -tau and method == "ple-symmetric":
            branch, winner = "rank", "plain"
        else:
            branch, winner = "wsft", None
        assert (row["branch"], row["winner"]) == (branch, winner)
        branches.append((branch, gap))

        x = plain_prompt_ids(tokenizer, row["query"])
        sum_p, n_p = logp(model, x, y_p.response_ids)
        sum_y, n_y = logp(model, x, y.response_ids)
        if branch == "rank" and rank_coef > 0:
            (sum_w, n_w), (sum_l, n_l) = (
                ((sum_p, n_p), (sum_y, n_y)) if winner == "guided" else ((sum_y, n_y), (sum_p, n_p))
            )
            d = sum_w / n_w - sum_l / n_l
            term = torch.clamp(margin - d, min=0) if options.get("rank_loss") != "logistic" else -F.logsigmoid(beta * d)
            losses.append(rank_coef * (term - options.get("rank_sft_coef", 0.0) * sum_w / n_w))
        elif branch == "wsft" and sft_coef > 0:
            w_p = math.exp(s_p / temperature) / (math.exp(s_p / temperature) + math.exp(s / temperature))
            w = 1 - w_p
            losses.append(sft_coef * (w_p * -sum_p + w * -sum_y) / (w_p * n_p + w * n_y))

    # The data must exercise what the test checks: both branches, and a clear win of the plain answer.
    assert any(b == "rank" for b, _ in branches) and any(b == "wsft" for b, _ in branches)
    assert any(gap < -tau for _, gap in branches)
    assert metrics["n_trained"] == len(losses)
    total = torch.stack(losses).sum() / len(losses)  # the mean over the queries that carry a loss
    assert metrics["loss"] == pytest.approx(total.item(), rel=1e-4)
    total.backward()
    assert_gradients_equal(trainer, step_gradients[0])


def test_context_distillation_step_is_sft_on_the_guided_answer_for_the_plain_query(
    tmp_path, tiny_chat_model, queries_file, track_params, step_gradients, monkeypatch
):
    config = load_config(
        overrides=tiny_config(
            tiny_chat_model,
            queries_file,
            tmp_path / "run",
            None,
            method="distill",
            iterations=1,
            queries_per_iteration=3,  # y_p for 6 queries
            batch_size=3,
            gradient_accumulation_steps=2,
            max_grad_norm=0.0,
            temperature=0.0,  # greedy, so the test can say which prompt each answer came from
        )
    )
    trainer = make_trainer(config)
    trained_on = []
    original = Policy.train_sft

    def record_examples(self, examples, *args):
        trained_on.extend(examples)
        return original(self, examples, *args)

    monkeypatch.setattr(Policy, "train_sft", record_examples)
    trainer.train()
    assert len(step_gradients) == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations" / "iter_000.jsonl").read_text().splitlines()]
    assert len(rows) == len(trained_on) == 6

    restore_initial_weights(trainer)
    tokenizer, model = trainer.tokenizer, trainer.model
    differs = 0
    total_nll, total_tokens = 0.0, 0
    for row, (prompt_ids, response_ids) in zip(rows, trained_on):
        x = plain_prompt_ids(tokenizer, row["query"])
        with torch.no_grad():
            answers = [
                model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids) :].tolist()
                for ids in (plain_prompt_ids(tokenizer, row["query"], PRINCIPLE), x)
            ]
        guided_answer, plain_answer = (
            a[: a.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in a else a for a in answers
        )
        assert (prompt_ids, response_ids) == (x, guided_answer)  # y_p, trained for the plain query
        differs += guided_answer != plain_answer
        sum_logp, n = logp(model, x, response_ids)
        total_nll, total_tokens = total_nll - sum_logp, total_tokens + n
    assert differs  # the answers to the two prompts differ, so training on y would be caught
    (total_nll / total_tokens).backward()  # SFT: the mean token NLL over the step
    assert_gradients_equal(trainer, step_gradients[0])
