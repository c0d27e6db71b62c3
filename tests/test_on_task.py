"""The demo's on-task measure: its threshold rule against hand-worked values, its batched log-likelihood against
one text at a time, and its wiring into `ple eval` with a tiny stand-in (it must read the answers, not the
prompts)."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

import ple.demo.on_task as on_task
from ple.cli import main
from ple.demo.on_task import FRAMES, OnTaskJudge, balanced_accuracy, false_reply_threshold


def test_the_threshold_reads_the_chosen_share_of_reviews_as_replies():
    on, off = np.array([0.5, 0.3, 0.1, -0.2]), np.array([-0.6, -0.4, 0.2])
    # Worked by hand: the 5% quantile of the sorted on-task ratios (-0.2, 0.1, 0.3, 0.5) lies 0.05 * 3 = 0.15 of
    # the way from -0.2 to 0.1: -0.155. The 50% quantile is halfway between 0.1 and 0.3.
    assert false_reply_threshold(on) == pytest.approx(-0.155)
    assert false_reply_threshold(on, 0.5) == pytest.approx(0.2)
    # At t = 0.25: 2/4 reviews above it, 3/3 replies at or below it.
    assert balanced_accuracy(on, off, 0.25) == pytest.approx(0.75)


def test_a_threshold_cached_by_another_rule_is_chosen_again(tmp_path, monkeypatch, tiny_chat_model):
    cached = tmp_path / "threshold.json"
    cached.write_text(json.dumps({"threshold": 0.0, "test_balanced_accuracy": 0.8}))  # the old rule's record
    calibrated = []

    def calibrate(judge, path):
        calibrated.append(path)
        record = {"rule": on_task.RULE, "threshold": -0.1, "test_balanced_accuracy": 0.7}
        path.write_text(json.dumps({**record, "test_on_task": 0.95, "test_off_task": 0.5}))

    monkeypatch.setattr(on_task, "calibrate", calibrate)
    judge = OnTaskJudge(tiny_chat_model, cached)
    assert calibrated == [cached] and judge.threshold == -0.1 and judge.reviews_read_on_task == 0.95
    OnTaskJudge(tiny_chat_model, cached)  # now cached under this rule: not chosen again
    assert calibrated == [cached]


def test_the_batched_log_likelihood_equals_one_text_at_a_time(tiny_chat_model, tmp_path):
    judge = object.__new__(OnTaskJudge)
    judge.tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    judge.model = AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
    judge.batch_size, judge.torch = 3, torch
    texts = ["the movie was good", "great fun", "the plot was dull and the acting was bad", "good"]
    batched = judge.mean_logprob(FRAMES["review"], texts)
    for text, value in zip(texts, batched):
        prefix = judge.tokenizer(FRAMES["review"], add_special_tokens=False)["input_ids"]
        answer = (
            judge.tokenizer(text, add_special_tokens=False)["input_ids"]
            + judge.tokenizer('"', add_special_tokens=False)["input_ids"]
        )
        ids = torch.tensor([prefix + answer])
        with torch.no_grad():
            logp = torch.log_softmax(judge.model(input_ids=ids).logits[0, :-1], -1)
        alone = np.mean([logp[len(prefix) - 1 + k, token].item() for k, token in enumerate(answer)])
        assert value == pytest.approx(alone, abs=1e-5)


class StandIn(OnTaskJudge):
    """Reads a text as a reply when it thanks or is glad; everything else continues the review."""

    def __init__(self):
        self.threshold, self.accuracy = 0.0, 1.0
        self.reviews_read_on_task, self.dialogue_read_as_replies = 1.0, 1.0

    def ratio(self, texts):
        return np.array([-1.0 if ("thank" in t or "glad" in t) else 1.0 for t in texts])


def test_ple_eval_reports_the_on_task_share_of_the_answers(tmp_path, tiny_chat_model, monkeypatch):
    monkeypatch.setattr(on_task, "shared_on_task_judge", StandIn)
    prompts = tmp_path / "prompts.jsonl"  # prompts that would read as replies: the measure must not read them
    prompts.write_text("".join(json.dumps({"prompt": f"thank you, glad {i}"}) + "\n" for i in range(6)))
    config = tiny_config(tiny_chat_model, prompts, tmp_path / "unused", "ple.sentiment:on_task")
    config.update(eval_dataset=str(prompts), eval_rewards=["ple.sentiment:on_task"], max_new_tokens=4)
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(config))
    assert main(["eval", "--config", str(path), "--model", tiny_chat_model, "--output-dir", str(tmp_path / "ev")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "ev" / "completions.jsonl").read_text().splitlines()]
    expected = np.mean([not ("thank" in r["completion"] or "glad" in r["completion"]) for r in rows])
    value = json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]["heldout:ple.sentiment:on_task"]
    assert value["value"] == pytest.approx(expected) and value["n"] == 6
    assert expected > 0  # the tiny model's answers are not the prompts' thanks


def test_the_report_marks_the_examples_the_measure_reads_as_replies():
    from ple.evaluation.report import _examples

    before = [{"prompt": f"p{i}", "completion": f"b{i}", "on": 1.0} for i in range(4)]
    after = [{"prompt": f"p{i}", "completion": f"a{i}", "on": float(i % 2)} for i in range(4)]
    lines = _examples(before, after, 4, ("on", 0.0, "*(reply)* "))
    expected = ["| p0 | b0 | *(reply)* a0 |", "| p1 | b1 | a1 |", "| p2 | b2 | *(reply)* a2 |", "| p3 | b3 | a3 |"]
    assert lines[4:] == expected
    assert "*(reply)*" not in "".join(_examples(before, after, 4, None))
