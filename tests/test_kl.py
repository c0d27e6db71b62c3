"""KL to the base model and the degeneration metrics, against values computed by hand."""

import itertools
import math

import pytest
import torch
from conftest import response_kls
from transformers import LlamaForCausalLM

from ple.evaluation.metrics import repeated_4gram_share, sentences, top_sentence_share
from ple.testing import tiny_llama_config


def tiny(seed: int, vocab: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a sharper distribution than the random init's near-uniform one
        model.lm_head.weight.mul_(40)
    return model


def sequence_logprob(model, prompt: list[int], response: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double().log_softmax(-1)
    return sum(float(logits[len(prompt) - 1 + t, tok]) for t, tok in enumerate(response))


def test_a_model_against_itself_has_exactly_zero_kl():
    model = tiny(0)
    rows = [{"prompt_ids": [1, 2], "response_ids": [0, 2, 1]}, {"prompt_ids": [2], "response_ids": [1]}]
    assert response_kls(model, model, rows, pad_id=0) == [(0.0, 0.0), (0.0, 0.0)]


def test_the_estimates_average_to_the_kl_of_every_sequence_enumerated():
    """V = 3 tokens, answers of length 3: all 27 answers enumerated. The exact (Rao-Blackwellized) and the k1
    estimates, weighted by pi(y), both equal sum_y pi(y) log(pi(y) / pi_base(y)), the sequence-level KL."""
    pi, base = tiny(0), tiny(1)
    prompt = [1, 2]
    answers = [list(y) for y in itertools.product(range(3), repeat=3)]
    log_pi = [sequence_logprob(pi, prompt, y) for y in answers]
    log_base = [sequence_logprob(base, prompt, y) for y in answers]
    assert sum(math.exp(lp) for lp in log_pi) == pytest.approx(1.0)
    kl = sum(math.exp(a) * (a - b) for a, b in zip(log_pi, log_base))
    assert kl > 0.05  # the two models differ enough for the test to mean something

    estimates = response_kls(pi, base, [{"prompt_ids": prompt, "response_ids": y} for y in answers], pad_id=0)
    weights = [math.exp(lp) for lp in log_pi]
    assert sum(w * e for w, (e, _) in zip(weights, estimates)) == pytest.approx(kl, rel=1e-4)
    assert sum(w * k for w, (_, k) in zip(weights, estimates)) == pytest.approx(kl, rel=1e-4)
    for (exact, k1), a, b in zip(estimates, log_pi, log_base):
        assert k1 == pytest.approx(a - b, abs=1e-4)  # k1 is the sampled log-ratio itself
        assert exact >= 0  # a sum of per-token KLs


def test_left_padding_does_not_change_a_rows_kl():
    pi, base = tiny(0), tiny(1)
    alone = response_kls(pi, base, [{"prompt_ids": [1], "response_ids": [2, 1]}], pad_id=0)
    padded = response_kls(
        pi,
        base,
        [{"prompt_ids": [1], "response_ids": [2, 1]}, {"prompt_ids": [2, 1, 2, 1], "response_ids": [1, 1, 2, 0]}],
        pad_id=0,
    )
    assert padded[0] == pytest.approx(alone[0], abs=1e-5)


def test_degeneration_metrics_by_hand():
    # 6 4-grams, of which "a b c d" repeats twice more: 2 of 6 repeat an earlier one.
    assert repeated_4gram_share("a b c d a b c d a") == pytest.approx(2 / 6)
    assert repeated_4gram_share("one two three") == 0.0 and repeated_4gram_share("a b c d e") == 0.0
    assert sentences("I loved it!  I loved   it! Great.\nGreat.") == {"i loved it!", "great."}
    answers = ["I'm so glad. The plot is thin.", "i'm   so glad. A fine film.", "Dull. I'm so glad.", "No."]
    assert top_sentence_share(answers) == 3 / 4  # "i'm so glad." is in three of the four answers
    assert top_sentence_share(["x", "y"]) == 0.5 and top_sentence_share([]) == 0.0


def test_a_pass_with_a_shared_prompt_prefix_gives_each_rows_own_logprobs():
    """Prompts that begin alike run their common beginning once (the chat template's system prompt, say); each
    row's log-probabilities must still be those of its own prompt and answer, run alone."""
    from ple.evaluation.metrics import continuation_logprobs

    model = tiny(2, vocab=8)
    shared = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4]  # 18 tokens: past the 16 that trigger sharing
    prompts = [shared + [5], shared + [6, 7, 2], [3, 1]]
    responses = [[2, 2, 1], [4], [7, 7, 7, 7]]
    got = continuation_logprobs(model, prompts, responses, pad_id=0)
    for p, r, lp in zip(prompts, responses, got):
        with torch.no_grad():
            alone = model(torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1].float().log_softmax(-1)
        assert lp.shape == alone.shape
        assert torch.allclose(lp, alone, atol=1e-5)


def test_generation_keeps_the_policys_own_next_token_logprobs():
    """What the evaluation's KL takes from the generation instead of a second pass: the temperature-1
    log-softmax at each answer position, whatever the sampling temperature."""
    from types import SimpleNamespace

    from ple.evaluation.metrics import continuation_logprobs
    from ple.generation import generate

    model = tiny(3, vocab=8)
    model.generation_config.eos_token_id = None
    tokenizer = SimpleNamespace(eos_token_id=None, pad_token_id=0, decode=lambda ids, **k: " ".join(map(str, ids)))
    prompts = [[1, 2, 3], [4, 5]]
    torch.manual_seed(0)
    samples = generate(model, tokenizer, prompts, max_new_tokens=4, temperature=0.5, keep_logprobs=True)
    forced = continuation_logprobs(model, prompts, [s.response_ids for s in samples], pad_id=0)
    for s, lp in zip(samples, forced):
        assert s.logprobs.shape == (4, 8)
        assert torch.allclose(s.logprobs, lp, atol=1e-5)
