"""Log-probabilities of responses under the policy: what PLE's losses (ple.losses) and the evaluation's perplexity
are computed from."""

import torch

from ple.batching import cache_kwarg, pad_batch, prefill_cache
from ple.losses import IGNORE_INDEX, sequence_logprobs


def response_logprobs(model, batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Summed log-probability and token count of each response given its prompt, in one forward pass.

    The batch is left-padded, so every response ends at the last position and only the last
    (longest response + 1) positions need logits: the LM head, a large matmul for a small model
    with a big vocabulary, skips the prompts, and so does the memory for their logits.
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = pad_batch([p + r for p, r in batch], pad_id, device)
    width = input_ids.shape[1]
    keep = min(width, max(len(r) for _, r in batch) + 1)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, (_, response) in enumerate(batch):
        labels[i, width - len(response) :] = torch.tensor(response, dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=keep
    ).logits[:, -keep:]
    return sequence_logprobs(logits, labels[:, -keep:].to(device))


def checkpointed(model) -> bool:
    """Whether transformers' gradient checkpointing is on in any of the model's layers."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def shared_prompt_logprobs(model, prompts: list[list[int]], response_sets: list[list[list[int]]], pad_id: int):
    """What `response_logprobs` gives for every (prompts[i], response_sets[j][i]), with each prompt run once.

    PLE scores two responses (y_p and y) to the same plain prompt x, so x's keys and values are computed
    in one forward pass and reused by both continuations; gradients flow back through them, so the
    losses and their gradients equal those of the separate sequences. Results are ordered set by set.
    A model whose layers recompute in the backward pass (gradient checkpointing) drops the cache, so there
    every (prompt, response) runs as its own sequence.
    """
    if model.training and torch.is_grad_enabled() and checkpointed(model):
        pairs = [(prompt, responses[i]) for responses in response_sets for i, prompt in enumerate(prompts)]
        return response_logprobs(model, pairs, pad_id)
    device = next(model.parameters()).device
    k = len(response_sets)
    name = cache_kwarg(model)
    _, prompt_mask, cache, last = prefill_cache(model, prompts, pad_id, device, name)
    cache.batch_repeat_interleave(k)  # row i * k + j continues prompt i with response_sets[j][i]
    responses = [response_sets[j][i] for i in range(len(prompts)) for j in range(k)]
    response_ids, response_mask = pad_batch(responses, pad_id, device, side="right")
    width = response_ids.shape[1]
    prompt_mask = prompt_mask.repeat_interleave(k, dim=0)
    continuation = model(
        input_ids=response_ids,
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        position_ids=prompt_mask.sum(-1, keepdim=True) + torch.arange(width, device=device),
        **{name: cache},
        use_cache=True,
    ).logits
    logits = torch.cat([last.repeat_interleave(k, dim=0), continuation], dim=1)
    labels = torch.full((len(responses), width + 1), IGNORE_INDEX, dtype=torch.long, device=device)
    labels[:, 1:] = torch.where(response_mask.bool(), response_ids, IGNORE_INDEX)
    sum_logp, n_tokens = sequence_logprobs(logits, labels)
    return sum_logp.view(-1, k).t().reshape(-1), n_tokens.view(-1, k).t().reshape(-1)
