"""Optional vLLM generation (`pip install "ple[vllm]"` on a CUDA machine).

The engine runs colocated with the policy, as TRL's colocate mode does. It is built from the base
checkpoint, and the policy's weights are pushed into it before a generation whenever an optimizer
step has changed them since the last push. LoRA is merged into the pushed weights and unmerged
afterwards, so the policy being trained is untouched.
"""

import importlib.util
from collections.abc import Iterator

import torch

from ple.errors import PLEError
from ple.generation import Sample
from ple.model import merged_lora


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def select_backend(name: str, device: torch.device) -> str:
    """The generation backend to use: `vllm` when asked for (or with `auto`, when installed and on a GPU)."""
    if name == "transformers":
        return name
    if name == "vllm":
        if not vllm_installed():
            raise PLEError('generation_backend=vllm, but vllm is not installed: pip install "ple[vllm]"')
        if device.type != "cuda":
            raise PLEError(f"generation_backend=vllm needs a CUDA device; this run is on {device}")
        return "vllm"
    return "vllm" if vllm_installed() and device.type == "cuda" else "transformers"


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the base checkpoint's names, with any LoRA adapter merged in (a model
    without one passes through `merged_lora` and the renaming unchanged)."""
    with merged_lora(model):
        for name, param in model.named_parameters():
            if "lora_" in name:  # merged into the base weights already
                continue
            yield name.removeprefix("base_model.model.").replace(".base_layer", ""), param.data


class VLLMGenerator:
    """Samples with a vLLM engine and keeps its weights equal to the policy's.

    `policy_version` counts the optimizer steps the trainer has taken; the engine is refreshed when the
    version it holds differs. It holds none at first, so a resumed policy is pushed before its first use.
    """

    def __init__(self, config, tokenizer):
        from vllm import LLM

        self.tokenizer = tokenizer
        self.synced_version: int | None = None
        self.pushes = 0
        self.llm = LLM(
            model=config.model,
            dtype="bfloat16" if config.dtype == "bfloat16" else "float32",
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
            seed=config.seed,
            enable_prefix_caching=True,
        )

    def sync(self, model, policy_version: int) -> bool:
        """Push the policy's weights if they changed since the last push; returns whether it pushed."""
        if self.synced_version == policy_version:
            return False
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in policy_weights(model):
            engine_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.synced_version = policy_version
        self.pushes += 1
        return True

    def generate(self, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed) -> list[Sample]:
        from vllm import SamplingParams

        if not prompt_ids:  # a process with no share of the queries
            return []
        params = [  # a seed per request: one shared seed would give repeated prompts (RAFT's K) the same answer
            SamplingParams(
                n=1,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k if top_k > 0 else -1,
                seed=seed + i,
            )
            for i in range(len(prompt_ids))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        samples = []
        for ids, output in zip(prompt_ids, outputs):
            response = list(output.outputs[0].token_ids)  # ends with the EOS token when the answer finished
            samples.append(Sample(ids, response, self.tokenizer.decode(response, skip_special_tokens=True)))
        return samples
