"""`ple plan`: what a run will hold in each GPU's memory, worked out before anything is downloaded.

The model is built from its config on the meta device (no weights), so a 70B plan takes seconds. The numbers
are estimates from the formulas below, not measurements: activations depend on the attention kernel and the
library versions, and CUDA's own context (about 0.5-1 GB) is not counted.

Per GPU, with P the model's parameters, T the trained ones (LoRA's adapters, or P), W processes, ZeRO stage z:

    weights      LoRA: P * b + 4 T (frozen base in the compute dtype's b bytes, adapters fp32); full: 4 P (fp32
                 master weights, as ple trains them); under DeepSpeed in bf16, 2 (P + T) and 2 P (the engine's bf16
                 weights; ple.zero); divided by W under ZeRO-3
    gradients    4 T (2 T under DeepSpeed in bf16); divided by W under ZeRO-2 and -3
    optimizer    8 T (AdamW's two fp32 moments), 12 T under DeepSpeed in bf16 (with the fp32 master weights);
                 divided by W under ZeRO-1 to -3; 0 when offloaded to the CPU
    gather       ZeRO-3 only: the full weights of the line above, held for a moment to generate and to save
    activations  a micro-batch of m queries runs 2 m sequences of S = max_prompt_tokens + max_new_tokens tokens:
                 34 * 2m * S * h * L * b / 2 bytes without checkpointing (Korthikanti et al. 2022, 16-bit
                 activations, attention scores not stored as sdpa and flash attention run), and
                 2m * S * h * (L * 2 + 34) * b / 2 with it (each layer's input, plus one layer recomputed); plus
                 the response positions' fp32 logits, 2m * (max_new_tokens + 1) * V * 4
    vllm         the colocated engine's share of the GPU: vllm_gpu_memory_utilization * the GPU's memory
    reward       a reward model on the policy's GPU: its parameters * its dtype's bytes
"""

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ple.errors import PLEError

GIB = 1024**3
KORTHIKANTI = 34  # bytes per token per hidden unit per layer of a transformer layer's saved activations, 16-bit


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    hidden: int
    layers: int
    vocab: int
    linear: tuple[tuple[str, int, int], ...]  # (module name, in features, out features) of every linear layer


@dataclass(frozen=True)
class Launch:
    processes: int = 1
    zero_stage: int = 0  # 0: no ZeRO (one process, or data-parallel replicas)
    offload_optimizer: bool = False


def lora_parameters(shape: ModelShape, rank: int, targets) -> int:
    """r * (in + out) for each adapted linear layer: all-linear is every linear layer but the output head (as
    peft), a list names modules by their last name part."""
    adapted = 0
    for name, fan_in, fan_out in shape.linear:
        short = name.rsplit(".", 1)[-1]
        if (targets == "all-linear" and short != "lm_head") or (targets != "all-linear" and short in targets):
            adapted += rank * (fan_in + fan_out)
    return adapted


def memory_plan(shape: ModelShape, config, launch: Launch, gpu_bytes: int | None, reward_parameters: int) -> dict:
    """Bytes per GPU of each part (the module docstring's formulas), for `config` under `launch`."""
    b = 2 if config.dtype in ("bfloat16", "auto") else 4  # auto is bf16 on any GPU that has it
    trained = lora_parameters(shape, config.lora_r, config.lora_target_modules) if config.use_lora else shape.parameters
    w, z = launch.processes, launch.zero_stage
    if z >= 1 and b == 2:  # DeepSpeed's bf16 mode: bf16 weights and gradients, fp32 master weights in the optimizer
        weights = 2 * (shape.parameters + trained) if config.use_lora else 2 * shape.parameters
        gradient_bytes, optimizer_bytes = 2, 12
    else:
        weights = shape.parameters * b + 4 * trained if config.use_lora else 4 * shape.parameters
        gradient_bytes, optimizer_bytes = 4, 8
    share = config.batch_size * config.gradient_accumulation_steps // w
    m = min(config.batch_size, max(share, 1))  # the micro-batch (ple.training.policy.step_share)
    tokens = 2 * m * (config.max_prompt_tokens + config.max_new_tokens)
    logits = 2 * m * (config.max_new_tokens + 1) * shape.vocab * 4
    layer = tokens * shape.hidden * b // 2
    vllm = config.generation_backend == "vllm" or (
        config.generation_backend == "auto" and importlib.util.find_spec("vllm") is not None
    )
    uses_vllm = vllm and config.vllm_mode == "colocate"
    reward_bytes = 2 if config.reward_dtype in ("bfloat16", "auto") else 4
    return {
        "weights": weights // w if z == 3 else weights,
        "gradients": gradient_bytes * trained // w if z >= 2 else gradient_bytes * trained,
        "optimizer": 0 if launch.offload_optimizer else optimizer_bytes * trained // (w if z >= 1 else 1),
        "gather": weights if z == 3 else 0,
        "activations": KORTHIKANTI * layer * shape.layers + logits,
        "activations_checkpointed": layer * (2 * shape.layers + KORTHIKANTI) + logits,
        "vllm": int(config.vllm_gpu_memory_utilization * gpu_bytes) if uses_vllm and gpu_bytes else 0,
        "reward": reward_parameters * reward_bytes if config.reward_device == "auto" else 0,
        "trained_parameters": trained,
    }


def peak(plan: dict, checkpointing: bool) -> int:
    """The most one GPU holds at once: what it always holds, plus the larger of a training step's activations and
    generation's ZeRO-3 gather (the two never overlap)."""
    held = sum(plan[k] for k in ("weights", "gradients", "optimizer", "vllm", "reward"))
    return held + max(plan["activations_checkpointed" if checkpointing else "activations"], plan["gather"])


# ---------------------------------------------------------------------------------------------- reading
def model_shape(name: str, causal: bool = True) -> ModelShape:
    """The shape of `name`'s model, built from its config on the meta device: nothing but the config is read."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise PLEError(f"plan: {name} does not exist (a local model directory, or a hub id)")
    try:
        model_config = AutoConfig.from_pretrained(name)
    except Exception as e:
        raise PLEError(f"plan: cannot read the config of {name!r} ({str(e).splitlines()[0]})") from None
    with init_empty_weights():
        auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
        model = auto.from_config(model_config)
    text = model_config.get_text_config()
    linear = tuple(
        (n, m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    )
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        linear=linear,
    )


def launch_from_environment() -> Launch:
    """What `accelerate launch` (or torchrun) tells its processes: their number, the ZeRO stage and offload."""
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
    return Launch(int(os.environ.get("WORLD_SIZE", "1")), int(stage) if stage else 0, offload not in ("none", ""))


def reward_model_name(config) -> str | None:
    """The training reward when it is one reward model (a hub id or path); None for functions and lists."""
    spec = config.reward
    if not isinstance(spec, str) or spec == "vader" or ":" in spec:
        return None
    return spec


def plan_report(config, processes: int | None, zero_stage: int | None, offload: bool, gpu_gib: float | None) -> str:
    """`ple plan`: the table for `config`, the launch read from the environment unless given."""
    import dataclasses

    import torch

    launch = launch_from_environment()
    launch = dataclasses.replace(
        launch,
        processes=launch.processes if processes is None else processes,
        zero_stage=launch.zero_stage if zero_stage is None else zero_stage,
        offload_optimizer=offload or launch.offload_optimizer,
    )
    if launch.processes < 1:
        raise PLEError(f"--processes must be >= 1, got {launch.processes}")
    if gpu_gib is not None and not gpu_gib > 0:
        raise PLEError(f"--gpu-memory must be a positive number of GiB, got {gpu_gib}")
    gpu_bytes = int(gpu_gib * GIB) if gpu_gib else None
    if gpu_bytes is None and torch.cuda.is_available():
        gpu_bytes = torch.cuda.mem_get_info()[1]
    shape = model_shape(config.model)
    reward = reward_model_name(config)
    reward_parameters = model_shape(reward, causal=False).parameters if reward else 0
    return plan_table(memory_plan(shape, config, launch, gpu_bytes, reward_parameters), shape, launch, gpu_bytes)


# ---------------------------------------------------------------------------------------------- presenting
def plan_table(plan: dict, shape: ModelShape, launch: Launch, gpu_bytes: int | None) -> str:
    rows = [
        ("weights", "weights"),
        ("gradients", "gradients"),
        ("optimizer state", "optimizer"),
        ("ZeRO-3 gather (generation, saving)", "gather"),
        ("activations", "activations"),
        ("activations, gradient checkpointing", "activations_checkpointed"),
        ("vLLM engine (colocated)", "vllm"),
        ("reward model", "reward"),
    ]
    lines = [
        f"parameters: {shape.parameters / 1e9:.3f} B, trained: {plan['trained_parameters'] / 1e6:.2f} M; "
        f"{launch.processes} process(es), ZeRO stage {launch.zero_stage or 'none'}"
        + (", optimizer offloaded to the CPU" if launch.offload_optimizer else ""),
        "",
        "| per GPU | GiB |",
        "|---|---|",
        *(f"| {label} | {plan[key] / GIB:.2f} |" for label, key in rows),
    ]
    for checkpointing in (False, True):
        total = peak(plan, checkpointing)
        verdict = ""
        if gpu_bytes:
            verdict = " (fits)" if total <= gpu_bytes else f" (does not fit {gpu_bytes / GIB:.0f} GiB)"
        name = "with gradient checkpointing" if checkpointing else "without gradient checkpointing"
        lines.append(f"| **peak, {name}** | **{total / GIB:.2f}**{verdict} |")
    lines.append("")
    lines.append("Estimates from ple.plan's formulas, not measurements; CUDA's own context is not counted.")
    return "\n".join(lines)
