import math

import pytest
import torch
from transformers import AutoTokenizer

from ple.errors import PLEError
from ple.rewards import ClassifierReward, RunningStd, build_reward, score


def test_vader_scores_completions():
    fn = build_reward("vader")
    good, bad = score(fn, ["x", "x"], ["What a wonderful, lovely film!", "Awful, terrible and boring."])
    assert good > 0.5 and bad < -0.5


def test_callable_from_file_and_module(reward_module):
    fn = build_reward(f"{reward_module}:positivity")
    assert score(fn, ["x"], ["good great bad"]) == [0.25]
    assert score(build_reward("ple.rewards:vader_reward"), ["x"], ["good"])[0] > 0


def test_bad_callables(reward_module, tmp_path):
    with pytest.raises(PLEError, match="reward file not found"):
        build_reward(f"{tmp_path}/missing.py:f")
    with pytest.raises(PLEError, match="could not be loaded"):
        build_reward(f"{reward_module}:no_such_function")
    with pytest.raises(PLEError, match="could not be loaded"):
        build_reward("no_such_module_xyz:f")
    with pytest.raises(PLEError, match="returned 1 scores for 2 completions"):
        score(build_reward(f"{reward_module}:wrong_length"), ["x", "y"], ["a", "b"])


def test_nan_inf_and_none_become_missing():
    assert score(lambda prompts, completions: [1.0, math.nan, math.inf, None], list("abcd"), list("abcd")) == [
        1.0,
        None,
        None,
        None,
    ]


def test_weighted_sum_and_missing_parts(reward_module):
    fn = build_reward([{"name": f"{reward_module}:positivity", "weight": 2.0}, {"name": "vader", "weight": 0.0}])
    assert score(fn, ["x"], ["good good"]) == [1.0]
    with_missing = build_reward([f"{reward_module}:positivity", f"{reward_module}:half_none"])
    assert score(with_missing, ["x", "x"], ["good", "good"])[1] is None
    with pytest.raises(PLEError, match="unknown key"):
        build_reward([{"name": "vader", "wieght": 1}])


def test_columns_reach_the_reward(reward_module):
    fn = build_reward(f"{reward_module}:echo_columns")
    assert score(fn, ["a", "b"], ["x", "y"], id=[3, 4]) == [3.0, 4.0]


def _classifier(path, tokenizer_path, num_labels):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        id2label={i: f"L{i}" for i in range(num_labels)},
        label2id={f"L{i}": i for i in range(num_labels)},
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_classifier_reward_scalar_head_and_labels(tmp_path, tiny_text_model):
    scalar = _classifier(tmp_path / "rm", tiny_text_model, 1)
    scores = score(ClassifierReward(scalar), ["the movie", "the film"], ["was good", "was bad"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores) and scores[0] != scores[1]

    labelled = _classifier(tmp_path / "clf", tiny_text_model, 2)
    probs = score(ClassifierReward(labelled, label="L1", input="completion"), ["x"] * 2, ["good", "bad"])
    assert all(0 < p < 1 for p in probs)
    logits = score(
        ClassifierReward(labelled, label="L1", output="logit", input="completion"), ["x"] * 2, ["good", "bad"]
    )
    assert logits != probs
    with pytest.raises(PLEError, match="set reward_label"):
        ClassifierReward(labelled)
    with pytest.raises(PLEError, match="'POS' is not a label"):
        ClassifierReward(labelled, label="POS")
    with pytest.raises(PLEError, match="could not be loaded"):
        ClassifierReward(str(tmp_path / "missing_rm"))


def test_running_std_matches_numpy():
    import numpy as np

    stats = RunningStd()
    stats.update([1.0, None, 2.0, 4.0])
    assert stats.std == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert RunningStd().std == 1.0


def test_vader_accepts_trl_conversational_completions():
    plain = score(build_reward("vader"), ["x"], ["What a wonderful film!"])
    chat = score(build_reward("vader"), ["x"], [[{"role": "assistant", "content": "What a wonderful film!"}]])
    assert plain == chat and plain[0] > 0.5


def _bos_chat_tokenizer(path):
    """A tokenizer that adds a BOS, with a chat template that writes one too (as Llama 3's do)."""
    from tokenizers.processors import TemplateProcessing

    from ple.testing import CHAT_TEMPLATE, _build_tokenizer

    tokenizer = _build_tokenizer(chat=True)
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return str(path), bos


def test_a_chat_reward_model_reads_one_bos_and_its_options(tmp_path):
    tokenizer_dir, bos = _bos_chat_tokenizer(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(tokenizer_dir)("the movie")["input_ids"][0] == bos  # it does add one
    rm = _classifier(tmp_path / "rm", tokenizer_dir, 1)
    reward = ClassifierReward(rm)
    ids = reward._encode(["the movie", [{"role": "user", "content": "a film"}]], ["was good", "was fun"])["input_ids"]
    assert [row.tolist().count(bos) for row in ids] == [1, 1]
    assert (
        ClassifierReward(rm, max_length=4)._encode(["the movie was"], ["very good and fun"])["input_ids"].shape[1] == 4
    )
    assert ClassifierReward(rm, dtype="bfloat16").model.dtype == torch.bfloat16


def test_a_reward_model_sorts_its_batches_by_length_and_returns_the_given_order(tmp_path, tiny_text_model):
    rm = _classifier(tmp_path / "rm", tiny_text_model, 1)
    prompts = ["the movie", "a film", "the story was", "i", "we watched the film and it was"]
    completions = ["was good", "so very very bad and awful and boring", "fun", "loved it a lot", "great"]
    one_by_one = [ClassifierReward(rm, batch_size=1)([p], [c])[0] for p, c in zip(prompts, completions)]
    assert len(set(one_by_one)) == len(one_by_one)  # distinct scores, so that an order mix-up would show
    assert ClassifierReward(rm, batch_size=2)(prompts, completions) == pytest.approx(one_by_one, abs=1e-5)
