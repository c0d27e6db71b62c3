"""Batched sampling with left padding: all prompts of an iteration in as few generate calls as fit."""

import contextlib
from dataclasses import dataclass

import torch

from ple import cpu_speedups
from ple.batching import pad_batch


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the first eos
    text: str
    logprobs: torch.Tensor | None = None  # (response tokens x vocab): the model's own next-token log-softmax


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return eos


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
    speedups: bool | None = None,
    keep_logprobs: bool = False,
) -> list[Sample]:
    """Sample one response per prompt (none for no prompts). batch_size=0 puts every prompt in one call.

    With `keep_logprobs`, each sample keeps the log-softmax of the model's raw logits (temperature 1, before any
    warper) at each of its response positions, which the evaluation's KL needs: no second pass of the policy.

    With `speedups` (by default: when the model is on a CPU) the calls go through ple.cpu_speedups (a shared-prefix
    KV cache, decode-step matmuls and an inverse-CDF draw, each tested equal in distribution or in value to the
    plain path); otherwise they are plain `model.generate` calls."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    batch_size = batch_size or max(1, len(prompt_ids))
    on_cpu = device.type == "cpu" if speedups is None else speedups
    if on_cpu:
        sampling = cpu_speedups.sampling_kwargs(temperature, top_p, top_k)
    else:
        sampling = plain_sampling_kwargs(temperature, top_p, top_k)
    samples: list[Sample] = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = prompt_ids[start : start + batch_size]
        if on_cpu:
            inputs = cpu_speedups.prompt_inputs(model, batch, tokenizer.pad_token_id, device)
            faster = cpu_speedups.decode_step_matmuls(model)
        else:
            ids, mask = pad_batch(batch, tokenizer.pad_token_id, device)
            inputs, faster = dict(input_ids=ids, attention_mask=mask), contextlib.nullcontext()
        with faster:
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(eos) or None,
                return_dict_in_generate=True,
                output_logits=keep_logprobs,
                **sampling,
            )
        logprobs = torch.stack(out.logits, 1).float().log_softmax(-1) if keep_logprobs else None
        for j, (prompt, row) in enumerate(zip(batch, out.sequences[:, inputs["input_ids"].shape[1] :].tolist())):
            end = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
            response = row[:end]
            text = tokenizer.decode(response, skip_special_tokens=True)
            kept = logprobs[j, :end].clone() if logprobs is not None else None  # a copy: the batch's tensor is freed
            samples.append(Sample(prompt_ids=prompt, response_ids=response, text=text, logprobs=kept))
    model.train(was_training)
    return samples


def plain_sampling_kwargs(temperature: float, top_p: float, top_k: int) -> dict:
    """transformers' own sampling at (temperature, top_p, top_k), or greedy decoding at temperature 0."""
    if temperature <= 0:
        return dict(do_sample=False)
    return dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
