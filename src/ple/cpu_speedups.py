"""What makes generation fast on a CPU, used by ple.generation.generate when the model is on one; plain
`model.generate` runs everywhere else. Each piece has an equivalence test (tests/test_generation.py) and its
measured gain (bench/NOTES.md):

- a shared-prefix KV cache: prompts that begin alike (a chat template, a task instruction) run that beginning
  once (`shared_prefixes`, `prefill_groups`, `prompt_inputs`);
- decode-step matmuls as (W @ x.T).T, which MKL runs faster for a few rows (`decode_step_matmuls`);
- an inverse-CDF draw instead of torch.multinomial's exponential variate per vocabulary entry
  (`InverseCDFSampler`, `sampling_kwargs`).

(The merged-LoRA swap, ple.model.merged_lora, also serves the vLLM weight push, so it lives with the model.)
"""

import contextlib
import types

import torch
import torch.nn.functional as F

from ple.batching import cache_kwarg, pad_batch, prefill_cache
from ple.errors import PLEError


def shared_prefixes(prompts: list[list[int]], min_shared: int = 16) -> list[tuple[int, list[int]]]:
    """Groups of prompts that begin with the same `min_shared` or more tokens, as (shared length, members);
    prompts that share less with every other are in no group. A shared length leaves out at least each
    member's last token, which generation has to run to get the first response token's logits.

    Sorted, prompts with a common beginning sit next to each other, and a run's common beginning is the
    shortest one between neighbours; the runs are split where that drops below `min_shared`."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    runs, lengths = [order[:1]], [float("inf")]
    for previous, current in zip(order, order[1:]):
        a, b = prompts[previous], prompts[current]
        common = next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        common = min(common, len(a) - 1, len(b) - 1)
        if common >= min_shared:
            runs[-1].append(current)
            lengths[-1] = min(lengths[-1], common)
        else:
            runs.append([current])
            lengths.append(float("inf"))
    return [(length, members) for length, members in zip(lengths, runs) if len(members) > 1]


def prefill_groups(prompts: list[list[int]]) -> list[tuple[int, list[int]]]:
    """The `shared_prefixes` groups whose common beginnings `prompt_inputs` runs once, or none where that
    would not save work: the groups' padded prefix block plus every row's padded rest must be smaller than
    the plain padded batch."""
    groups = shared_prefixes(prompts)
    shared = [n for _, n in _membership(groups, len(prompts))]
    prefix_width = max([n for n, _ in groups], default=0)
    suffix_width = max((len(p) - n for p, n in zip(prompts, shared)), default=0)
    plain_width = max(map(len, prompts), default=0)
    return groups if len(groups) * prefix_width + len(prompts) * suffix_width < len(prompts) * plain_width else []


def _membership(groups: list[tuple[int, list[int]]], n_prompts: int) -> list[tuple[int, int]]:
    """Each prompt's (group index, shared length); (0, 0) for a prompt in no group."""
    found = [(0, 0)] * n_prompts
    for group, (length, members) in enumerate(groups):
        for i in members:
            found[i] = (group, length)
    return found


def prompt_inputs(model, prompts: list[list[int]], pad_id: int, device) -> dict:
    """`generate` inputs for a batch of prompts: left-padded ids and mask and, where groups of prompts begin
    alike (`prefill_groups`), a KV cache that already holds each group's common beginning, computed once.

    Chat templates and task instructions make most of a prompt the same across a batch: the plain prompts
    of an iteration share their system prompt and instruction, and so do the guided ones. Row i is laid out
    as [padding, its group's shared tokens, padding, the rest of prompt i]; the mask and the position ids
    that `generate` derives from it skip the padding, so each row sees exactly its own prompt."""
    groups = prefill_groups(prompts)
    if not groups:
        ids, mask = pad_batch(prompts, pad_id, device)
        return dict(input_ids=ids, attention_mask=mask)
    group_of, shared = zip(*_membership(groups, len(prompts)))
    suffixes = [p[n:] for p, n in zip(prompts, shared)]
    name = cache_kwarg(model)
    prefixes = [prompts[members[0]][:n] for n, members in groups]
    prefix_ids, prefix_mask, cache, _ = prefill_cache(model, prefixes, pad_id, device, name)
    # A prompt in no group takes some group's cached rows, all masked out for it.
    rows = torch.tensor(group_of, device=device)
    cache.batch_select_indices(rows)
    in_group = torch.tensor([n > 0 for n in shared], device=device)[:, None]
    suffix_ids, suffix_mask = pad_batch(suffixes, pad_id, device)
    return dict(
        input_ids=torch.cat([prefix_ids[rows], suffix_ids], dim=1),
        attention_mask=torch.cat([prefix_mask[rows] * in_group, suffix_mask], dim=1),
        **{name: cache},
    )


@contextlib.contextmanager
def decode_step_matmuls(model, max_rows: int = 64):
    """Inside, on a CPU, each plain `nn.Linear` of `model` multiplies a decode step's input (one position for
    each of at most `max_rows` sequences) as (W @ x.T).T, made contiguous again, instead of x @ W.T. The
    product is the same; MKL computes it much faster with the few rows on that side: 18% less time for 16
    sequences x 32 new tokens on 2 cores (bench/NOTES.md). Other inputs, and layers whose forward someone
    else already replaced (accelerate's hooks do that), are left alone; leaving restores every layer."""
    if next(model.parameters()).device.type != "cpu":
        yield model
        return

    def forward(layer, x):
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[0] > max_rows:
            return F.linear(x, layer.weight, layer.bias)
        y = (layer.weight @ x[:, 0].T).T.contiguous()
        return (y if layer.bias is None else y + layer.bias)[:, None]

    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in vars(m)]
    try:
        for layer in layers:
            layer.forward = types.MethodType(forward, layer)
        yield model
    finally:
        for layer in layers:
            vars(layer).pop("forward", None)


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
        if probs.isnan().any():
            raise PLEError("the policy's next-token probabilities are NaN: its weights have diverged")
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
