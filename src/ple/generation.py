"""Batched sampling with left padding: all prompts of an iteration in as few generate calls as fit."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the first eos
    text: str


def encode_prompts(tokenizer, prompts: list[str], add_special_tokens: bool, max_tokens: int) -> list[list[int]]:
    """Token ids of each prompt; overlong prompts keep their last `max_tokens` tokens."""
    if not prompts:  # a process with no share of the queries
        return []
    ids = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    return [p[-max_tokens:] for p in ids]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return eos


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor, block: int = 256) -> torch.Tensor:
    """One token per row of `probs` (rows x vocab, not necessarily normalised): the first token whose cumulative
    probability exceeds `uniform` (in [0, 1)) times the row's total, so token i is drawn with probability
    probs[i] / total. The cumulative sums are float64 and run in two levels, over blocks of `block` tokens and
    then inside the chosen block, so that they cost two short passes rather than one long sequential one."""
    rows, vocab = probs.shape
    blocks = F.pad(probs, (0, -vocab % block)).view(rows, -1, block)
    block_cdf = blocks.sum(-1, dtype=torch.float64).cumsum(-1)
    target = _strictly_below(uniform.double()[:, None] * block_cdf[:, -1:], block_cdf[:, -1:])
    chosen = torch.searchsorted(block_cdf, target, right=True)
    target = target - torch.where(chosen > 0, block_cdf.gather(1, (chosen - 1).clamp(min=0)), 0.0)
    inner_cdf = blocks[torch.arange(rows, device=probs.device), chosen[:, 0]].cumsum(-1, dtype=torch.float64)
    offset = torch.searchsorted(inner_cdf, _strictly_below(target, inner_cdf[:, -1:]), right=True)
    return (chosen * block + offset)[:, 0]


def _strictly_below(value: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    # Round-off must not push a target onto the end of a cumulative sum: the search would then land on a
    # trailing token of probability zero.
    return torch.minimum(value, torch.nextafter(total, torch.zeros_like(total)))


class InverseCDFSampler:
    """The last logits processor of a sampling `generate` call that runs in greedy mode: it draws each row's
    token with `inverse_cdf_sample` and leaves only that token for the argmax. The distribution is the one
    `do_sample=True` samples from, but transformers draws with torch.multinomial, which makes an exponential
    variate for every vocabulary entry: 23 ms a decode step for 16 rows of SmolLM2's 49152 tokens on 2 CPU
    cores, against 0.6 ms here (bench/NOTES.md)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float(), dim=-1)
        uniform = torch.rand(scores.shape[0], device=scores.device, dtype=torch.float64)
        token = inverse_cdf_sample(probs, uniform)
        return torch.full_like(scores, -float("inf")).scatter_(1, token[:, None], 0.0)


def sampling_kwargs(temperature: float, top_p: float, top_k: int) -> dict:
    """`generate` arguments for sampling at (temperature, top_p, top_k), or for greedy decoding at temperature 0.
    The warpers are transformers' own, in the order `do_sample=True` applies them; the draw is ours."""
    if temperature <= 0:
        return dict(do_sample=False)
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    warpers += [TopKLogitsWarper(top_k)] if top_k > 0 else []
    warpers += [TopPLogitsWarper(top_p)] if top_p < 1.0 else []
    return dict(do_sample=False, logits_processor=LogitsProcessorList([*warpers, InverseCDFSampler()]))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 0,
) -> list[Sample]:
    """Sample one response per prompt (none for no prompts). batch_size=0 puts every prompt in one call."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    batch_size = batch_size or max(1, len(prompt_ids))
    sampling = sampling_kwargs(temperature, top_p, top_k)
    samples: list[Sample] = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[start : start + batch_size]
        ids, mask = left_pad(batch, tokenizer.pad_token_id, device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos) or None,
            **sampling,
        )
        for prompt, row in zip(batch, out[:, ids.shape[1] :].tolist()):
            end = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
            response = row[:end]
            text = tokenizer.decode(response, skip_special_tokens=True)
            samples.append(Sample(prompt_ids=prompt, response_ids=response, text=text))
    model.train(was_training)
    return samples
