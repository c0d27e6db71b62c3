"""Batched sampling with left padding: all prompts of an iteration in as few generate calls as fit."""

from dataclasses import dataclass

import torch


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
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
        if temperature > 0
        else dict(do_sample=False)
    )
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
