"""Padded batches and KV caches, shared by generation (ple.generation, ple.cpu_speedups) and the log-probabilities
the losses take (ple.logprobs)."""

import torch


def pad_batch(sequences: list[list[int]], pad_id: int, device, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of `sequences` padded to one width (at least 1, so that a batch of empty
    responses still has a column) on the given side."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def prefill_cache(model, prompts: list[list[int]], pad_id: int, device, cache_name: str):
    """`prompts`, left-padded, run into a fresh KV cache: (ids, mask, cache, the logits of each prompt's last
    token). The position ids skip the padding, so each row is computed as if it ran alone. `cache_name` is
    `cache_kwarg(model)`, which callers look up once for this call and the ones that continue the cache."""
    from transformers import DynamicCache

    ids, mask = pad_batch(prompts, pad_id, device)
    cache = DynamicCache()
    last = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        **{cache_name: cache},
        use_cache=True,
        logits_to_keep=1,  # left padding puts every prompt's last token here: it predicts the first response token
    ).logits
    return ids, mask, cache, last


def cache_kwarg(model) -> str:
    """The name under which the model's forward takes a KV cache: transformers renamed past_key_values to
    cache during 5.x (the old name is removed in 5.40), and PLE supports both sides of the rename."""
    import inspect

    from transformers import PreTrainedModel

    hf_model = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)  # under PEFT/DeepSpeed
    parameters = inspect.signature(hf_model.forward).parameters if hf_model is not None else {}
    return "cache" if "cache" in parameters else "past_key_values"
