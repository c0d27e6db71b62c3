import types

import pytest
import torch

from ple.batching import pad_batch
from ple.cpu_speedups import (
    decode_step_matmuls,
    inverse_cdf_sample,
    prompt_inputs,
    sampling_kwargs,
    shared_prefixes,
)
from ple.generation import generate


def chisquare_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of draw counts to probabilities; cells expecting under five draws are pooled into one."""
    counts, probs = counts.double(), probs.double()
    expected = probs / probs.sum() * counts.sum()
    keep = expected >= 5
    observed, expected = counts[keep], expected[keep]
    if not keep.all():
        observed = torch.cat([observed, counts[~keep].sum()[None]])
        expected = torch.cat([expected, (counts.sum() - expected.sum())[None]])
    statistic = ((observed - expected) ** 2 / expected).sum()
    half_dof = torch.tensor((len(observed) - 1) / 2, dtype=torch.float64)
    return torch.special.gammaincc(half_dof, statistic / 2).item()  # the chi-square distribution's upper tail


@pytest.mark.parametrize(
    "probs, uniforms, expected",
    [
        # cumulative sums 0.1, 0.3, 0.6, 1.0: the first token whose sum exceeds u
        ([0.1, 0.2, 0.3, 0.4], [0.0, 0.05, 0.1, 0.35, 0.65, 0.99, 1 - 1e-17], [0, 0, 1, 2, 3, 3, 3]),
        # zero-probability tokens are never drawn, nor is the zero-probability tail at u -> 1
        ([0.5, 0.0, 0.0, 0.5, 0.0], [0.0, 0.4999, 0.5, 1 - 1e-17], [0, 0, 3, 3]),
        ([0.5, 0.5, 0.0, 0.0, 0.0], [0.75, 1 - 1e-17], [1, 1]),
        # unnormalised rows are drawn in proportion: 2 / 8 and 6 / 8
        ([2.0, 0.0, 6.0], [0.2, 0.25, 0.9], [0, 2, 2]),
    ],
)
def test_inverse_cdf_sample_picks_by_hand(probs, uniforms, expected):
    rows = torch.tensor([probs] * len(uniforms))
    assert inverse_cdf_sample(rows, torch.tensor(uniforms, dtype=torch.float64), block=2).tolist() == expected


def test_inverse_cdf_sample_frequencies_match_the_probabilities():
    torch.manual_seed(0)
    vocab = 300  # not a multiple of the block
    probs = torch.softmax(torch.randn(vocab) * 2, dim=0)
    counts = torch.zeros(vocab)
    for _ in range(10):
        uniform = torch.rand(20_000, dtype=torch.float64)
        counts += torch.bincount(inverse_cdf_sample(probs.expand(20_000, vocab), uniform, block=64), minlength=vocab)
    assert chisquare_pvalue(counts, probs) > 1e-3
    assert chisquare_pvalue(torch.roll(counts, 1), probs) < 1e-6  # an off-by-one pick fails the same test


def test_generate_samples_the_models_tempered_distribution(tiny_chat_model):
    from ple.model import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_chat_model)
    model = load_causal_lm(tiny_chat_model).eval()
    prompt = tokenizer("hello there")["input_ids"]
    ids, mask = pad_batch([prompt], tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits[0, -1] / 0.1, dim=-1).double()

    torch.manual_seed(0)
    draws = generate(model, tokenizer, [prompt] * 4000, max_new_tokens=1, temperature=0.1)
    counts = torch.bincount(torch.tensor([s.response_ids[0] for s in draws]), minlength=len(probs))
    assert chisquare_pvalue(counts, probs) > 1e-3

    def seeded(seed):
        torch.manual_seed(seed)
        return [s.response_ids for s in generate(model, tokenizer, [prompt] * 8, 6, temperature=0.1)]

    assert seeded(0) == seeded(0) != seeded(1)


def test_top_k_one_samples_the_greedy_answer(tiny_chat_model):
    from ple.model import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_chat_model)
    model = load_causal_lm(tiny_chat_model).eval()
    prompts = tokenizer(["hello there", "a much longer prompt than that"])["input_ids"]
    greedy = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=0)
    torch.manual_seed(1)
    sampled = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=1.3, top_k=1)
    assert [s.response_ids for s in sampled] == [s.response_ids for s in greedy]
    assert sampling_kwargs(0, 1.0, 0) == {"do_sample": False}


def test_shared_prefixes_by_hand():
    a, b, c = [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9], [7, 8, 9]
    # sorted: a, a, b, c; neighbours share 5 (a's last token left out), 4, then nothing
    assert shared_prefixes([a, b, c, a], min_shared=3) == [(4, [0, 3, 1])]
    assert shared_prefixes([a, b, c, a], min_shared=5) == [(5, [0, 3])]
    assert shared_prefixes([a, b, c, a], min_shared=6) == []
    d, e = [7, 8, 9, 1], [7, 8, 2]
    # sorted: a, b | e, c, d; e and c share 2 tokens (each keeps its last), c and d 2 (c keeps its last)
    assert shared_prefixes([a, d, b, e, c], min_shared=2) == [(4, [0, 2]), (2, [3, 4, 1])]
    assert shared_prefixes([], min_shared=1) == [] and shared_prefixes([a], min_shared=1) == []


def test_shared_prefix_inputs_give_the_plain_batch_logits(tiny_chat_model):
    from ple.model import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_chat_model)
    model = load_causal_lm(tiny_chat_model).eval()
    torch.manual_seed(0)
    head, other_head = torch.randint(5, 40, (20,)).tolist(), torch.randint(5, 40, (18,)).tolist()
    prompts = [head + [5, 6, 7], other_head + [3, 4], head + [8], [1, 2, 3], head + [9, 10, 11, 12, 13], other_head]
    assert shared_prefixes(prompts) == [(20, [0, 2, 4]), (17, [5, 1])]

    inputs = prompt_inputs(model, prompts, tokenizer.pad_token_id, "cpu")
    ids, mask = pad_batch(prompts, tokenizer.pad_token_id, "cpu")
    assert "cache" in inputs or "past_key_values" in inputs  # the shared beginnings were computed once

    def greedy(**kwargs):
        return model.generate(
            **kwargs,
            max_new_tokens=5,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
        )

    shared, plain = greedy(**inputs), greedy(input_ids=ids, attention_mask=mask)
    assert torch.equal(shared.sequences[:, -5:], plain.sequences[:, -5:])
    torch.testing.assert_close(torch.stack(shared.logits), torch.stack(plain.logits), atol=1e-5, rtol=1e-5)


def test_decode_step_matmuls_compute_the_same_steps_and_restore_the_layers(tiny_chat_model):
    from ple.model import load_causal_lm

    model = load_causal_lm(tiny_chat_model).eval()
    hooked = model.lm_head
    hooked.forward = types.MethodType(lambda layer, x: torch.nn.functional.linear(x, layer.weight), hooked)
    torch.manual_seed(0)
    ids = torch.randint(5, 40, (3, 7))
    greedy = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    plain = model.generate(input_ids=ids, **greedy)
    calls = []
    with decode_step_matmuls(model):
        layers = [m for m in model.modules() if "forward" in vars(m) and m is not hooked]
        assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers; the hooked head kept
        for layer in layers:
            layer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
        inside = model.generate(input_ids=ids, **greedy)
    assert set(calls) == {7, 1}  # the prefill's 7 positions, then one position a decode step
    assert torch.equal(inside.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(inside.logits), torch.stack(plain.logits), atol=1e-5, rtol=1e-5)
    assert [m for m in model.modules() if "forward" in vars(m)] == [hooked]


def test_the_cpu_speedups_change_no_greedy_answer(tiny_chat_model):
    """Greedy decoding through ple.cpu_speedups and through plain `model.generate` gives the same tokens."""
    from ple.model import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_chat_model)
    model = load_causal_lm(tiny_chat_model)
    torch.manual_seed(1)
    head = torch.randint(5, 40, (20,)).tolist()  # a shared beginning, so that the prefix cache is used
    prompts = [head + [5, 6, 7], head + [8], [1, 2, 3], head + [9, 10, 11, 12, 13], [4, 5]]
    fast = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=0.0, speedups=True)
    plain = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=0.0, speedups=False)
    assert [s.response_ids for s in fast] == [s.response_ids for s in plain]
    assert all(len(s.response_ids) > 0 for s in fast)
